//! Which heads are alive and serving which racks, as this head sees it.
//!
//! A rack is answered by its first head that is alive and serving it (see
//! `dhcp::handlers::RackTurn`). To know that, each head probes the other heads of its
//! racks (`GET /health`, every [`PROBE_EVERY`], each probe bounded by [`PROBE_TIMEOUT`])
//! and keeps the answer in memory: the racks the peer serves now (its
//! DHCP has the interface for them, and it holds what their nodes need). A peer that has
//! not answered for [`DEAD_AFTER`] counts as down.
//!
//! Probes go over HTTP/2 to the peer's gRPC port, under the cluster's mutual TLS: only a
//! head of this cluster can answer for a head (a spoofed "I serve rack 1" would keep the
//! backup silent while nobody serves it). The same report is on the HTTP boot port for
//! operators (`curl http://HEAD:9873/health`); heads never read that one.
//!
//! Why probes and not a record in Raft: liveness changes are not configuration, an idle
//! cluster must not write (issue: ~140 Raft writes/s from a keep-alive), and a probe
//! measures exactly what matters — can this peer's process answer now — where a record
//! would measure whether the peer can still reach the leader. Why these timings: a head
//! that is alive but loaded (a boot storm, a slow disk) still answers a tiny JSON within
//! a second; four missed probes in a row (2 s) are a dead or hung head, which a SIGSTOP
//! or a dropped link produces and a keep-alive would notice only after tens of seconds.
//! Take-over in the worst case: 2 s to notice, plus the client's next retransmission.
//!
//! Before its first answer a peer is given the benefit of the doubt for [`DEAD_AFTER`]
//! after this head starts, so a restarted backup does not answer over a live primary.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State as AxState;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::dhcp::{MacAddr, RackHealth};
use super::view::ViewRx;
use crate::pki::tls::Dialer;

/// How often each peer is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Deadline of one probe (connect and answer).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A peer with no good probe for this long is down.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);

/// A head's answer to `GET /health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The head's Raft id.
    pub id: u64,
    /// Racks it serves now (DHCP can, and it holds their nodes' artifacts).
    pub racks: Vec<String>,
    /// What it believes of the heads it probes: id → the racks that head serves, or
    /// `None` while it counts that head as down (for operators and tests; peers ignore it).
    #[serde(default)]
    pub peers: BTreeMap<u64, Option<Vec<String>>>,
    /// Whether it is in contact with a quorum (may take racks over).
    #[serde(default)]
    pub quorum: bool,
}

/// What one peer last told us.
#[derive(Debug, Clone, Default)]
struct Peer {
    last_ok: Option<Instant>,
    racks: BTreeSet<String>,
    /// Whether we last logged it as down (logs only on changes).
    down: bool,
}

/// This head's liveness record of its peers (see the module documentation).
pub struct Liveness {
    me: u64,
    started: Instant,
    quorum: Box<dyn Fn() -> bool + Send + Sync>,
    served: RwLock<BTreeSet<String>>,
    /// Racks whose nodes need a blob this head lacks (kept by the daemon from the
    /// artifact sync's missing set).
    not_ready: RwLock<BTreeSet<String>>,
    peers: RwLock<HashMap<u64, Peer>>,
    transactions: Mutex<Transactions>,
}

/// How long a DHCP transaction is remembered (a client retransmits within seconds).
const TRANSACTION_TTL: Duration = Duration::from_secs(60);
/// At most this many transactions are remembered (a flood of made-up ones costs memory
/// no more than this; forgetting one costs a waited client one more retransmission).
const TRANSACTIONS_MAX: usize = 4096;

/// DHCP transactions (client hardware address, xid) this head has received, with when
/// it first saw each: [`RackHealth::retransmission`].
#[derive(Debug, Default)]
struct Transactions {
    first_seen: HashMap<(MacAddr, u32), Instant>,
}

impl Transactions {
    /// Record a request of transaction (`mac`, `xid`) received at `now`: whether an
    /// earlier one was seen (within [`TRANSACTION_TTL`]).
    fn sighting(&mut self, mac: MacAddr, xid: u32, now: Instant) -> bool {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < TRANSACTION_TTL;
        if self.first_seen.get(&(mac, xid)).is_some_and(fresh) {
            return true;
        }
        if self.first_seen.len() >= TRANSACTIONS_MAX {
            self.first_seen.retain(|_, t| fresh(t));
            if self.first_seen.len() >= TRANSACTIONS_MAX {
                self.first_seen.clear();
            }
        }
        self.first_seen.insert((mac, xid), now);
        false
    }
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness").field("me", &self.me).finish_non_exhaustive()
    }
}

impl Liveness {
    /// A record for head `me`; `quorum` says whether it is in contact with a quorum now.
    pub fn new(me: u64, quorum: impl Fn() -> bool + Send + Sync + 'static) -> Liveness {
        Liveness {
            me,
            started: Instant::now(),
            quorum: Box::new(quorum),
            served: RwLock::default(),
            not_ready: RwLock::default(),
            peers: RwLock::default(),
            transactions: Mutex::default(),
        }
    }

    /// Record the racks whose nodes need a blob this head lacks; logs the changes.
    pub fn set_not_ready(&self, racks: BTreeSet<String>) {
        let mut cur = self.not_ready.write().unwrap_or_else(|p| p.into_inner());
        if *cur == racks {
            return;
        }
        for r in racks.difference(&cur) {
            tracing::warn!(rack = %r, "this head lacks artifacts the rack's nodes need; it does not answer the rack's DHCP until it has fetched them (wwctl cluster status: MISSING)");
        }
        for r in cur.difference(&racks) {
            tracing::info!(rack = %r, "this head holds every artifact the rack's nodes need again");
        }
        *cur = racks;
    }

    /// Whether this head holds what `rack`'s nodes need.
    pub fn ready_for(&self, rack: &str) -> bool {
        !self.not_ready.read().unwrap_or_else(|p| p.into_inner()).contains(rack)
    }

    /// What this head answers to `GET /health`.
    pub fn report(&self) -> HealthReport {
        let served = self.served.read().unwrap_or_else(|p| p.into_inner()).clone();
        let peers = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, p)| (*id, self.alive(p).then(|| p.racks.iter().cloned().collect())))
            .collect();
        HealthReport {
            id: self.me,
            racks: served.into_iter().filter(|r| self.ready_for(r)).collect(),
            peers,
            quorum: (self.quorum)(),
        }
    }

    /// Peers whose last probe is older than [`DEAD_AFTER`] (for status and tests).
    pub fn down_peers(&self) -> Vec<u64> {
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<u64> = peers
            .iter()
            .filter(|(_, p)| !self.alive(p))
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        out
    }

    fn alive(&self, p: &Peer) -> bool {
        match p.last_ok {
            Some(t) => t.elapsed() < DEAD_AFTER,
            None => self.started.elapsed() < DEAD_AFTER,
        }
    }

    /// Record one probe's outcome (the probe loop; tests).
    pub fn record(&self, id: u64, answer: Result<HealthReport, String>) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let p = peers.entry(id).or_default();
        match answer {
            Ok(r) => {
                if p.down {
                    tracing::info!(head = id, racks = %r.racks.join(","), "head answers health probes again");
                }
                p.last_ok = Some(Instant::now());
                p.racks = r.racks.into_iter().collect();
                p.down = false;
            }
            Err(e) => {
                let dead = match p.last_ok {
                    Some(t) => t.elapsed() >= DEAD_AFTER,
                    None => self.started.elapsed() >= DEAD_AFTER,
                };
                if dead && !p.down {
                    p.down = true;
                    tracing::warn!(
                        head = id,
                        "head is down for the racks it serves (no health answer for {} s: {e}); \
                         the next head of each of its racks answers DHCP for it",
                        DEAD_AFTER.as_secs()
                    );
                }
            }
        }
    }

    /// Probe the heads that share a rack with this one until `stop` resolves, through
    /// `dialer` (the head's mutual TLS, on the peers' gRPC ports).
    pub async fn run(self: Arc<Self>, view: ViewRx, dialer: Dialer, stop: impl std::future::Future<Output = ()>) {
        // Its own client (its own connections): a probe never queues behind a blob
        // transfer to the same peer.
        let http = match dialer.http(PROBE_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot build the health-probe HTTP client: {e}");
                return;
            }
        };
        let probing = async {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let targets = self.targets(&view, &dialer);
                let probes = targets.into_iter().map(|(id, url)| {
                    let http = http.clone();
                    async move { (id, probe(&http, &url).await) }
                });
                for (id, answer) in futures::future::join_all(probes).await {
                    self.record(id, answer);
                }
            }
        };
        tokio::select! {
            _ = probing => {}
            _ = stop => {}
        }
    }

    /// Other heads listed in a rack this head is in, with their health URL (on their
    /// gRPC port; a head that has not registered one yet is not probed and counts as
    /// down once the start-up grace is over).
    fn targets(&self, view: &ViewRx, dialer: &Dialer) -> BTreeMap<u64, String> {
        let v = view.borrow().clone();
        let mut out = BTreeMap::new();
        for rack in v.racks.values().filter(|r| r.position(self.me).is_some()) {
            for h in rack.heads.iter().filter(|h| h.id != self.me) {
                if let Some(info) = v.heads.get(&h.id).filter(|i| !i.grpc.is_empty()) {
                    out.insert(h.id, format!("{}/health", dialer.base_url(&info.grpc)));
                }
            }
        }
        out
    }
}

async fn probe(http: &reqwest::Client, url: &str) -> Result<HealthReport, String> {
    let r = http
        .get(url)
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url} answered {}", r.status()));
    }
    r.json::<HealthReport>().await.map_err(|e| e.to_string())
}

impl RackHealth for Liveness {
    fn serving(&self, id: u64, rack: &str) -> bool {
        if id == self.me {
            return self.served.read().unwrap_or_else(|p| p.into_inner()).contains(rack) && self.ready_for(rack);
        }
        let peers = self.peers.read().unwrap_or_else(|p| p.into_inner());
        match peers.get(&id) {
            Some(p) if p.last_ok.is_some() => self.alive(p) && p.racks.contains(rack),
            // Not heard from yet: alive during the start-up grace only.
            _ => self.started.elapsed() < DEAD_AFTER,
        }
    }

    fn in_quorum(&self) -> bool {
        (self.quorum)()
    }

    fn ready(&self, rack: &str) -> bool {
        self.ready_for(rack)
    }

    fn set_served(&self, racks: &BTreeSet<String>) {
        let mut s = self.served.write().unwrap_or_else(|p| p.into_inner());
        if *s != *racks {
            *s = racks.clone();
        }
    }

    fn retransmission(&self, mac: &MacAddr, xid: u32) -> bool {
        self.transactions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sighting(*mac, xid, Instant::now())
    }
}

/// `GET /health`: this head's [`HealthReport`].
pub fn router(liveness: Arc<Liveness>) -> Router {
    Router::new().route("/health", get(health)).with_state(liveness)
}

async fn health(AxState(l): AxState<Arc<Liveness>>) -> Json<HealthReport> {
    Json(l.report())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_is_a_retransmission_from_its_second_sighting_until_it_is_old() {
        let mut t = Transactions::default();
        let (mac, other) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let t0 = Instant::now();
        assert!(!t.sighting(mac, 7, t0), "first sighting");
        assert!(t.sighting(mac, 7, t0 + Duration::from_secs(1)), "retransmission");
        assert!(!t.sighting(mac, 8, t0), "another xid");
        assert!(!t.sighting(other, 7, t0), "another client");
        assert!(
            !t.sighting(mac, 7, t0 + TRANSACTION_TTL + Duration::from_secs(1)),
            "forgotten after the TTL, then a first sighting again"
        );
        // Bounded: a flood of transactions never grows the memory past the cap.
        for x in 0..(2 * TRANSACTIONS_MAX as u32) {
            t.sighting(other, 1000 + x, t0 + Duration::from_secs(90));
        }
        assert!(t.first_seen.len() <= TRANSACTIONS_MAX);
    }

    #[test]
    fn a_peer_is_serving_only_while_it_answers_and_lists_the_rack() {
        let l = Liveness::new(1, || true);
        l.record(
            2,
            Ok(HealthReport {
                id: 2,
                racks: vec!["r1".into()],
                peers: Default::default(),
                quorum: true,
            }),
        );
        assert!(l.serving(2, "r1"));
        assert!(!l.serving(2, "r2"), "a rack the peer does not serve");
        assert!(l.down_peers().is_empty());
        assert_eq!(l.report().peers[&2], Some(vec!["r1".to_string()]));
    }

    #[test]
    fn a_silent_peer_is_down_after_the_grace() {
        let mut l = Liveness::new(1, || true);
        l.started = Instant::now() - DEAD_AFTER - Duration::from_millis(1);
        assert!(!l.serving(3, "r1"), "never answered, grace over");
        l.record(3, Err("connection refused".into()));
        assert_eq!(l.down_peers(), vec![3]);
        // A peer whose last good answer is older than DEAD_AFTER is down too.
        l.peers.write().unwrap().get_mut(&3).unwrap().last_ok = Some(Instant::now() - DEAD_AFTER);
        l.peers.write().unwrap().get_mut(&3).unwrap().racks.insert("r1".into());
        assert!(!l.serving(3, "r1"));
    }

    #[test]
    fn during_the_start_grace_unknown_peers_count_as_serving() {
        let l = Liveness::new(1, || true);
        assert!(l.serving(2, "r1"));
    }

    #[test]
    fn the_report_lists_served_racks_this_head_is_ready_for() {
        let l = Liveness::new(1, || false);
        l.set_served(&["r1".to_string(), "r2".to_string()].into());
        l.set_not_ready(["r1".to_string()].into());
        assert_eq!(l.report().racks, vec!["r2".to_string()]);
        assert!(!l.serving(1, "r1"), "lacks r1's artifacts");
        assert!(!l.in_quorum());
    }
}
