//! Sockets and the receive loop around the sans-IO [`handlers`](super::handlers).
//!
//! - **One socket per configured interface**, bound to `0.0.0.0:67` with `SO_BINDTODEVICE`:
//!   a client without an address broadcasts, so the socket must take broadcasts, and the
//!   device binding is what tells us *which link* a request came from (the subnet choice
//!   depends on it) and guarantees a broadcast reply leaves on that link only. A head
//!   therefore never answers on an interface it was not told to serve: there is no
//!   socket there.
//! - **Reply addressing** is decided by the handlers ([`Destination`]); this module maps
//!   it to `giaddr:67`, `ciaddr:68` or `255.255.255.255:68` ([`Ports`] lets tests move
//!   these off the privileged ports and off broadcast).
//! - **Bounded by construction**: one datagram in yields at most one datagram out, sent
//!   only to a relay or client inside a served subnet or to the link's broadcast
//!   address, never to the packet's source address (which anyone can forge).
//! - Each interface's loop reads the latest [`BootView`](crate::boot::view::BootView)
//!   per packet (an `Arc` clone) so view republishes apply without a restart.
//! - **Each interface is supervised on its own** ([`DhcpServer::run`]): an interface that is missing
//!   at start (a VLAN not created yet, a typo) is logged once and retried every
//!   [`REBIND_EVERY`] ([`retry_every`]) while the others serve; one that disappears or is re-created (its
//!   index changes, which silently deafens a device-bound socket) is bound again. One
//!   rack's link never takes DHCP away from the head's other racks.
//! - **A DISCOVER that finds no pool address at hand** (the head's next block is being
//!   committed through Raft, a burst at start-up) is held, not dropped: it is answered
//!   as soon as the allocator signals new addresses ([`LeaseAllocator::refilled`]), for
//!   at most [`HOLD`] and [`MAX_HELD`] requests per socket, then counted as skipped.
//! - **Every request leaves a trace** ([`observe`](super::observe)): drops are counted per
//!   reason in [`Stats`], drops and answers are logged at debug (rate-limited), and a
//!   summary of the drops is logged at info every minute while there are any.
//! - **Racks** (`wwctl rack`) are read from the view: per packet the server uses its
//!   configuration plus the racks that list this head ([`DhcpConfig::with_racks`]),
//!   rebuilt only when the racks or the interfaces' addresses (re-read every
//!   [`ADDRS_EVERY`]) change; a rack it cannot serve is logged at warn once per change.
//! - A server is a value, [`DhcpServer`] (config, view, allocator, reply ports, counters):
//!   `server.run(shutdown)` serves every configured interface, `server.run_on(socket, iface,
//!   shutdown)` one socket the caller bound (tests do). Both follow the servers' convention
//!   and stop when `shutdown` resolves.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::Encodable;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::config::{DhcpConfig, IfAddrs, RackPlan};
use super::handlers::{handle_packet, AllServing, Chain, Destination, RackHealth, Skip, Verdict};
use super::lease::LeaseAllocator;
use super::observe::{Observer, SUMMARY_EVERY};
use crate::boot::retry::retry_every;
use crate::boot::view::{BootView, ViewRx};
use crate::state::Rack;

/// How often the interfaces' addresses are re-read (racks are matched to interfaces by
/// this head's address on the rack).
pub const ADDRS_EVERY: Duration = Duration::from_secs(2);

/// Server failures an operator must act on.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "cannot open the DHCP socket on interface {iface} (0.0.0.0:{port}): {source}; check that the interface \
         exists (`ip link show {iface}`), that wulfd runs as root (binding to a device and to port 67 needs \
         CAP_NET_RAW and CAP_NET_BIND_SERVICE), and that no other DHCP server (dhcpd, dnsmasq, kea) uses port \
         {port} on it"
    )]
    Bind {
        iface: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("interface {iface} is not in boot.dhcp.interfaces; add it there, or serve on a configured interface")]
    NotConfigured { iface: String },
}

/// UDP ports and broadcast address used for replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Where relays listen (replies to `giaddr`); 67.
    pub server: u16,
    /// Where clients listen; 68.
    pub client: u16,
    /// Broadcast replies go here; 255.255.255.255.
    pub broadcast: Ipv4Addr,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            server: 67,
            client: 68,
            broadcast: Ipv4Addr::BROADCAST,
        }
    }
}

impl Ports {
    fn addr(&self, d: Destination) -> SocketAddr {
        SocketAddr::V4(match d {
            Destination::Relay(ip) => SocketAddrV4::new(ip, self.server),
            Destination::Client(ip) => SocketAddrV4::new(ip, self.client),
            Destination::Broadcast => SocketAddrV4::new(self.broadcast, self.client),
        })
    }
}

/// Counters of one server (all interfaces), for status, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
    /// Requests dropped (no reply), all reasons; per reason in [`Stats::dropped`].
    pub skipped: AtomicU64,
    pub send_errors: AtomicU64,
    /// Requests dropped per reason, indexed by `Skip as usize` (see [`Skip::ALL`]).
    dropped: [AtomicU64; Skip::ALL.len()],
}

impl Stats {
    /// Requests dropped so far for `reason`.
    pub fn dropped(&self, reason: Skip) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Every reason with a non-zero count, in [`Skip::ALL`] order.
    pub fn drops(&self) -> Vec<(Skip, u64)> {
        Skip::ALL
            .iter()
            .map(|&s| (s, self.dropped(s)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Count one dropped request.
    pub(crate) fn count_drop(&self, reason: Skip) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A UDP socket on `0.0.0.0:port` that only sees and sends on `iface`, with broadcast
/// allowed and a large receive buffer (PXE storms after a rack power-on are bursts).
/// Registered with the current tokio runtime.
pub fn bind_interface(iface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    let err = |source| DhcpError::Bind {
        iface: iface.to_owned(),
        port,
        source,
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_broadcast(true).map_err(err)?;
    s.bind_device(Some(iface.as_bytes())).map_err(err)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// How often a missing interface is tried again, and how often a served one is checked
/// for having been re-created.
pub const REBIND_EVERY: Duration = Duration::from_secs(2);

/// A DHCP server: what it serves, where it reads nodes and leases, how it addresses
/// replies, and where it counts. Build it with [`DhcpServer::new`] (or a struct literal
/// to change `ports`/`stats`), then [`run`](Self::run) or [`run_on`](Self::run_on).
#[derive(Clone)]
pub struct DhcpServer {
    /// `boot: dhcp:`: the interfaces and subnets served.
    pub config: DhcpConfig,
    /// The boot view, read per packet (republishes apply without a restart).
    pub view: ViewRx,
    /// Dynamic pool leases and discovery of unknown MACs.
    pub leases: Arc<dyn LeaseAllocator>,
    /// Reply ports and broadcast address; tests move them off 67/68 and broadcast.
    pub ports: Ports,
    /// Counters of this server (all interfaces), for status and benchmarks.
    pub stats: Arc<Stats>,
    /// This head's Raft id: racks listing it are served. `None`: only the subnets of
    /// `config` (tests, a head without racks).
    pub head_id: Option<u64>,
    /// What this head knows of the other heads, for the racks' turn rule.
    pub health: Arc<dyn RackHealth>,
}

impl std::fmt::Debug for DhcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpServer")
            .field("config", &self.config)
            .field("ports", &self.ports)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A server while it runs: its value, the handler chain and the observer (logs and
/// drop counts, see [`observe`](super::observe)), shared by the interfaces' loops.
struct Serving {
    server: DhcpServer,
    chain: Chain,
    /// Held only for the bookkeeping of one request, never across an await.
    observer: Mutex<Observer>,
    /// The interfaces' addresses and a generation bumped when they change.
    addrs: Mutex<(u64, Arc<IfAddrs>)>,
    /// The configuration in effect and what it was built from.
    plan: Mutex<Option<PlanCache>>,
}

/// The last [`RackPlan`] with its inputs (racks, address generation).
struct PlanCache {
    racks: Arc<std::collections::BTreeMap<String, Rack>>,
    addrs_gen: u64,
    plan: Arc<RackPlan>,
}

impl DhcpServer {
    /// A server on the standard ports with fresh counters.
    pub fn new(config: DhcpConfig, view: ViewRx, leases: Arc<dyn LeaseAllocator>) -> DhcpServer {
        DhcpServer {
            config,
            view,
            leases,
            ports: Ports::default(),
            stats: Arc::default(),
            head_id: None,
            health: Arc::new(AllServing),
        }
    }

    /// Serve every configured interface, each supervised on its own, until `shutdown`
    /// resolves. With no interfaces configured DHCP is off and this returns at once.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DhcpError> {
        if !self.config.enabled() {
            tracing::info!("DHCP is off: boot.dhcp.interfaces is empty");
            return Ok(());
        }
        let names: Vec<String> = self.config.interfaces.iter().map(|i| i.name.clone()).collect();
        let serving = Arc::new(self.serving());
        let loops = names.into_iter().map(|name| serving.clone().supervise(name));
        tokio::select! {
            _ = futures::future::join_all(loops) => {}
            _ = serving.summaries() => {}
            _ = serving.watch_addresses() => {}
            _ = shutdown => {}
        }
        Ok(())
    }

    /// Serve one socket the caller bound, as if it were interface `iface`'s (not
    /// supervised: the caller owns the socket), until `shutdown` resolves.
    pub async fn run_on(
        self,
        socket: UdpSocket,
        iface: &str,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DhcpError> {
        if self.config.interface(iface).is_none() {
            return Err(DhcpError::NotConfigured {
                iface: iface.to_owned(),
            });
        }
        let serving = self.serving();
        tokio::select! {
            _ = serving.serve(socket, iface) => {}
            _ = serving.summaries() => {}
            _ = serving.watch_addresses() => {}
            _ = shutdown => {}
        }
        Ok(())
    }

    fn serving(self) -> Serving {
        Serving {
            server: self,
            chain: Chain::standard(),
            observer: Mutex::new(Observer::new(Instant::now())),
            addrs: Mutex::new((0, Arc::default())),
            plan: Mutex::new(None),
        }
    }
}

/// The IPv4 addresses of this network namespace's interfaces that are running (up, with
/// carrier): a rack whose link lost its carrier is not served, so peers pass this head
/// over for it instead of trusting a head that cannot reach the rack.
fn read_addrs() -> IfAddrs {
    let mut out = IfAddrs::new();
    match if_addrs::get_if_addrs() {
        Ok(list) => {
            for i in list.into_iter().filter(|i| i.is_oper_up()) {
                if let std::net::IpAddr::V4(ip) = i.ip() {
                    out.entry(i.name).or_default().push(ip);
                }
            }
        }
        Err(e) => tracing::warn!("cannot read the interfaces' addresses (racks are matched by them): {e}"),
    }
    for a in out.values_mut() {
        a.sort();
    }
    out
}

impl Serving {
    /// Every [`SUMMARY_EVERY`], the info line of the requests dropped since the last
    /// one, if any (an idle head writes nothing). Runs until the server stops.
    async fn summaries(&self) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(line) = self.observer().summary(Instant::now()) {
                tracing::info!("{line}");
            }
        }
    }

    /// Re-read the interfaces' addresses every [`ADDRS_EVERY`] and rebuild the plan when
    /// they or the racks change (only for a head that serves racks). Addresses are read
    /// on this task's thread, so in the namespace the server runs in.
    async fn watch_addresses(&self) {
        if self.server.head_id.is_none() {
            return std::future::pending().await;
        }
        let mut view = self.server.view.clone();
        loop {
            let now = Arc::new(read_addrs());
            {
                let mut a = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
                if *a.1 != *now {
                    *a = (a.0 + 1, now);
                }
            }
            // Keep the plan (and the racks reported as served to peers) current without
            // waiting for a request: a backup learns a primary serves a rack before the
            // first node asks.
            let v = view.borrow_and_update().clone();
            self.plan(&v);
            tokio::select! {
                _ = tokio::time::sleep(ADDRS_EVERY) => {}
                r = view.changed() => if r.is_err() { return std::future::pending().await },
            }
        }
    }

    /// The configuration for a request under `view`: the head's own plus its racks.
    fn plan(&self, view: &BootView) -> Arc<RackPlan> {
        let (gen, addrs) = self.addrs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut cache = self.plan.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref() {
            if c.addrs_gen == gen && (Arc::ptr_eq(&c.racks, &view.racks) || *c.racks == *view.racks) {
                return c.plan.clone();
            }
        }
        let plan = Arc::new(match self.server.head_id {
            Some(me) => self.server.config.with_racks(me, &view.racks, &addrs),
            None => RackPlan {
                config: self.server.config.clone(),
                served: Default::default(),
                problems: Vec::new(),
            },
        });
        let old = cache.as_ref().map(|c| c.plan.clone());
        if old.as_ref().map(|o| &o.problems) != Some(&plan.problems) {
            for p in &plan.problems {
                tracing::warn!("DHCP: {p}");
            }
        }
        if old.as_ref().map(|o| &o.served) != Some(&plan.served) && self.server.head_id.is_some() {
            let racks: Vec<&str> = plan.served.iter().map(String::as_str).collect();
            tracing::info!(racks = %racks.join(","), "DHCP: racks served by this head");
        }
        self.server.health.set_served(&plan.served);
        *cache = Some(PlanCache {
            racks: view.racks.clone(),
            addrs_gen: gen,
            plan: plan.clone(),
        });
        plan
    }

    fn observer(&self) -> std::sync::MutexGuard<'_, Observer> {
        // A panic while observing leaves counters, not invariants: keep going.
        self.observer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep one interface served for as long as the server runs (see the module notes).
    async fn supervise(self: Arc<Self>, iface: String) {
        let what = format!("DHCP on interface {iface} (the other interfaces keep serving)");
        // Bounded by the server's shutdown, which drops this future.
        loop {
            let bind = || std::future::ready(bind_interface(&iface, self.server.ports.server));
            let Some(sock) = retry_every(REBIND_EVERY, &what, std::future::pending(), bind).await else {
                return; // not reached: no bound, no stop; the server's shutdown drops this future
            };
            // The index the socket is bound to; a re-created interface gets a new one.
            let index = rustix::net::netdevice::name_to_index(&sock, &iface).ok();
            tracing::info!(%iface, "DHCP serving");
            let check = sock.as_fd().try_clone_to_owned();
            tokio::select! {
                _ = self.serve(sock, &iface) => {}
                _ = interface_changed(check, &iface, index) => {
                    tracing::warn!(%iface, "interface disappeared or was re-created; re-opening its DHCP socket");
                }
            }
            tokio::time::sleep(REBIND_EVERY).await;
        }
    }

    /// The receive loop of one socket: one datagram in, at most one out.
    async fn serve(&self, sock: UdpSocket, iface: &str) {
        let DhcpServer {
            config, leases, stats, ..
        } = &self.server;
        if config.interface(iface).is_none() {
            return;
        }
        // Large enough for any datagram; DHCP messages are ≤ 576 bytes unless jumbo options.
        let mut buf = vec![0u8; 65536];
        // Requests that found no pool address at hand (a block is committing), with when
        // they came: answered when the allocator has addresses again (see `HOLD`).
        let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut refilled = leases.refilled();
        let mut limiter = config.rate_limit.map(super::limit::MacLimiter::new);
        enum Event {
            Packet(io::Result<(usize, SocketAddr)>),
            /// Addresses arrived (false: the allocator is gone), or the oldest held
            /// request is due.
            Retry(bool),
        }
        loop {
            let due = held.front().map(|(t, _)| tokio::time::Instant::from_std(*t + HOLD));
            let event = tokio::select! {
                r = sock.recv_from(&mut buf) => Event::Packet(r),
                ok = changed(&mut refilled), if !held.is_empty() => Event::Retry(ok),
                () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    Event::Retry(true)
                }
            };
            match event {
                Event::Packet(Ok((n, _))) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    if let (Some(l), Some(mac)) = (limiter.as_mut(), super::limit::chaddr(&buf[..n])) {
                        let now = Instant::now();
                        if !l.admit(mac, now) {
                            let dropped = Verdict::Skip(Skip::RateLimited);
                            self.observer().observe(stats, iface, &buf[..n], &dropped, now);
                            continue;
                        }
                    }
                    let may_hold = held.len() < MAX_HELD;
                    if self.answer(&sock, iface, &buf[..n], may_hold).await {
                        held.push_back((Instant::now(), buf[..n].to_vec()));
                    }
                }
                Event::Packet(Err(e)) => {
                    tracing::warn!(%iface, "DHCP receive failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Event::Retry(ok) => {
                    if !ok {
                        refilled = None;
                    }
                    let now = Instant::now();
                    for (at, packet) in std::mem::take(&mut held) {
                        // Past its time: answered as skipped (counted, logged).
                        let may_hold = now < at + HOLD;
                        if self.answer(&sock, iface, &packet, may_hold).await {
                            held.push_back((at, packet));
                        }
                    }
                }
            }
        }
    }

    /// Run the handler chain on one datagram and send its reply. True when the request
    /// found no pool address at hand and `may_hold`: the caller holds it instead (not
    /// counted as a drop yet).
    async fn answer(&self, sock: &UdpSocket, iface: &str, packet: &[u8], may_hold: bool) -> bool {
        let DhcpServer {
            view,
            leases,
            ports,
            stats,
            health,
            ..
        } = &self.server;
        let v = view.borrow().clone();
        let plan = self.plan(&v);
        let Some(interface) = plan.config.interface(iface) else {
            return false;
        };
        let verdict = handle_packet(
            packet,
            interface,
            &plan.config,
            &v,
            leases.as_ref(),
            health.as_ref(),
            &self.chain,
        );
        if may_hold && matches!(verdict, Verdict::Skip(Skip::PoolPending)) {
            return true;
        }
        self.observer().observe(stats, iface, packet, &verdict, Instant::now());
        match verdict {
            Verdict::Reply(r) => {
                let bytes = match r.msg.to_vec() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(%iface, "cannot encode DHCP reply: {e}");
                        return false;
                    }
                };
                let to = ports.addr(r.dest);
                match sock.send_to(&bytes, to).await {
                    Ok(_) => {
                        stats.replied.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%iface, %to, "DHCP send failed: {e}");
                    }
                }
            }
            // Counted and logged (rate-limited) by the observer.
            Verdict::Skip(_) => {}
        }
        false
    }
}

/// How long a request that found no pool address at hand is held for the block being
/// committed (a Raft round trip, milliseconds); a client retransmits after ~4 s anyway.
pub const HOLD: Duration = Duration::from_secs(2);
/// Requests held at most per socket; beyond, they are dropped as before (the client
/// retransmits).
pub const MAX_HELD: usize = 4096;

/// The allocator's refill signal: true when it changed, false when it is gone; never
/// resolves without one.
async fn changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Resolves once `iface` no longer has `index` (gone, or re-created with a new one).
async fn interface_changed(fd: io::Result<std::os::fd::OwnedFd>, iface: &str, index: Option<u32>) {
    let Ok(fd) = fd else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(REBIND_EVERY).await;
        if rustix::net::netdevice::name_to_index(&fd, iface).ok() != index {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::MemoryAllocator;
    use crate::boot::view::BootView;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::Decodable;
    use tokio::sync::{oneshot, watch};

    fn view() -> BootView {
        let mut st = crate::state::State::default();
        let conf = crate::model::parse_nodes_conf(
            "nodes:\n  n1:\n    network devices:\n      default: {hwaddr: \"02:00:00:00:00:01\", ipaddr: 127.0.0.50}\n",
        )
        .unwrap();
        let r = st.apply(
            1,
            &crate::state::Request {
                id: None,
                cmd: crate::state::Command::Import { conf },
                audit: None,
            },
        );
        assert!(r.0.is_ok());
        BootView::from_state(&st, 1)
    }

    /// A server for relayed requests on loopback, its socket, and a socket acting as
    /// the relay (the server answers relays on that socket's port).
    async fn relayed_lo_server() -> (DhcpServer, UdpSocket, UdpSocket) {
        let cfg = DhcpConfig::from_yaml(
            "interfaces: [{name: lo, subnets: [lo]}]\nsubnets: {lo: {network: 127.0.0.0/8, server: 127.0.0.1, relayed: true}}",
        )
        .unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The view lives as long as the receiver: a dropped sender keeps the last value.
        let (_vtx, vrx) = watch::channel(Arc::new(view()));
        let dhcp = DhcpServer {
            ports: Ports {
                server: relay.local_addr().unwrap().port(),
                ..Ports::default()
            },
            ..DhcpServer::new(cfg, vrx, Arc::new(MemoryAllocator::new()))
        };
        (dhcp, server, relay)
    }

    #[tokio::test]
    async fn run_on_answers_a_relayed_discover_and_stops_on_shutdown() {
        let (dhcp, server, relay) = relayed_lo_server().await;
        let server_addr = server.local_addr().unwrap();
        let stats = dhcp.stats.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dhcp.run_on(server, "lo", async {
            let _ = stopped.await;
        }));
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(7, u, u, u, Ipv4Addr::LOCALHOST, &[2, 0, 0, 0, 0, 1]);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        relay.send_to(&m.to_vec().unwrap(), server_addr).await.unwrap();
        // Garbage and an unknown MAC get nothing; the next reply is the OFFER.
        relay.send_to(&[0u8; 300], server_addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("an OFFER within 5 s")
            .unwrap();
        let r = Message::from_bytes(&buf[..n]).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.yiaddr(), "127.0.0.50".parse::<Ipv4Addr>().unwrap());
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .unwrap()
            .unwrap();
        assert_eq!(stats.replied.load(Ordering::Relaxed), 1);
        assert!(stats.received.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn the_running_server_counts_drops_per_reason() {
        let (dhcp, server, relay) = relayed_lo_server().await;
        let server_addr = server.local_addr().unwrap();
        let stats = dhcp.stats.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dhcp.run_on(server, "lo", async {
            let _ = stopped.await;
        }));
        let u = Ipv4Addr::UNSPECIFIED;
        let discover = |mac: [u8; 6], giaddr: Ipv4Addr| {
            let mut m = Message::new_with_id(7, u, u, u, giaddr, &mac);
            m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
            m.to_vec().unwrap()
        };
        // Drops first: one socket is served in order, so once the OFFER for the last
        // datagram is back, all of them have been decided.
        relay.send_to(&[0u8; 300], server_addr).await.unwrap();
        relay
            .send_to(&discover([2, 0, 0, 0, 0, 0x99], Ipv4Addr::LOCALHOST), server_addr)
            .await
            .unwrap();
        relay
            .send_to(&discover([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 9, 0, 1)), server_addr)
            .await
            .unwrap();
        relay
            .send_to(&discover([2, 0, 0, 0, 0, 1], Ipv4Addr::LOCALHOST), server_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("an OFFER within 5 s")
            .unwrap();
        assert_eq!(
            Message::from_bytes(&buf[..n]).unwrap().opts().msg_type(),
            Some(MessageType::Offer)
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops on shutdown")
            .unwrap()
            .unwrap();
        assert_eq!(
            stats.drops(),
            vec![
                (Skip::Malformed, 1),
                (Skip::RelayNotAccepted, 1),
                (Skip::UnknownClient, 1)
            ]
        );
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.received.load(Ordering::Relaxed), 4);
        assert_eq!(stats.replied.load(Ordering::Relaxed), 1);
    }

    /// An allocator with no address until the test gives it one (a pool block landing).
    struct Starved {
        ip: Mutex<Option<Ipv4Addr>>,
        refill: Option<watch::Sender<u64>>,
    }

    impl LeaseAllocator for Starved {
        fn allocate(
            &self,
            _mac: crate::boot::dhcp::MacAddr,
            _subnet: &crate::boot::dhcp::config::Subnet,
            _view: &BootView,
        ) -> Result<Option<Ipv4Addr>, crate::boot::dhcp::LeaseError> {
            Ok(*self.ip.lock().unwrap())
        }
        fn discover(
            &self,
            _mac: crate::boot::dhcp::MacAddr,
            _view: &BootView,
        ) -> Result<Option<String>, crate::boot::dhcp::LeaseError> {
            Ok(None)
        }
        fn refilled(&self) -> Option<watch::Receiver<u64>> {
            self.refill.as_ref().map(|s| s.subscribe())
        }
    }

    async fn pool_server(leases: Arc<Starved>) -> (DhcpServer, UdpSocket, UdpSocket) {
        let cfg = DhcpConfig::from_yaml(
            "interfaces: [{name: lo, subnets: [lo]}]\nsubnets: {lo: {network: 127.0.0.0/8, server: 127.0.0.1, \
             relayed: true, pool: {start: 127.0.9.1, end: 127.0.9.200}}}",
        )
        .unwrap();
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_vtx, vrx) = watch::channel(Arc::new(view()));
        let dhcp = DhcpServer {
            ports: Ports {
                server: relay.local_addr().unwrap().port(),
                ..Ports::default()
            },
            ..DhcpServer::new(cfg, vrx, leases)
        };
        (dhcp, server, relay)
    }

    fn unknown_discover() -> Vec<u8> {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(9, u, u, u, Ipv4Addr::LOCALHOST, &[2, 0, 0, 0, 0, 0x42]);
        m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
        m.to_vec().unwrap()
    }

    /// A DISCOVER that finds the pool's free list empty is held, not dropped, and
    /// answered as soon as the allocator says a block landed.
    #[tokio::test]
    async fn a_discover_waiting_for_a_pool_block_is_answered_when_it_lands() {
        let (tx, _) = watch::channel(0u64);
        let leases = Arc::new(Starved {
            ip: Mutex::new(None),
            refill: Some(tx),
        });
        let (dhcp, server, relay) = pool_server(leases.clone()).await;
        let server_addr = server.local_addr().unwrap();
        let stats = dhcp.stats.clone();
        let task = tokio::spawn(dhcp.run_on(server, "lo", std::future::pending()));
        relay.send_to(&unknown_discover(), server_addr).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.received.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the server never read the DISCOVER");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stats.replied.load(Ordering::Relaxed), 0, "no address yet: nothing sent");
        assert_eq!(stats.dropped(Skip::PoolPending), 0, "held, not dropped");
        // The block lands.
        *leases.ip.lock().unwrap() = Some(Ipv4Addr::new(127, 0, 9, 7));
        leases.refill.as_ref().unwrap().send_modify(|n| *n += 1);
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
            .await
            .expect("the OFFER once the block landed")
            .unwrap();
        let r = Message::from_bytes(&buf[..n]).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.yiaddr(), Ipv4Addr::new(127, 0, 9, 7));
        assert_eq!(stats.skipped.load(Ordering::Relaxed), 0);
        task.abort();
    }

    /// Held for at most `HOLD`: with no block landing, the request is then dropped and
    /// counted as before (the client retransmits).
    #[tokio::test]
    async fn a_held_discover_is_dropped_after_the_hold() {
        let leases = Arc::new(Starved {
            ip: Mutex::new(None),
            refill: None,
        });
        let (dhcp, server, relay) = pool_server(leases).await;
        let server_addr = server.local_addr().unwrap();
        let stats = dhcp.stats.clone();
        let task = tokio::spawn(dhcp.run_on(server, "lo", std::future::pending()));
        relay.send_to(&unknown_discover(), server_addr).await.unwrap();
        let deadline = Instant::now() + HOLD + Duration::from_secs(5);
        while stats.dropped(Skip::PoolPending) == 0 {
            assert!(Instant::now() < deadline, "a held request was never given up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.replied.load(Ordering::Relaxed), 0);
        task.abort();
    }

    #[tokio::test]
    async fn off_without_interfaces_and_refuses_unconfigured_sockets() {
        let (_vtx, vrx) = watch::channel(Arc::new(BootView::default()));
        let leases: Arc<dyn LeaseAllocator> = Arc::new(MemoryAllocator::new());
        DhcpServer::new(DhcpConfig::default(), vrx.clone(), leases.clone())
            .run(std::future::pending())
            .await
            .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let e = DhcpServer::new(DhcpConfig::default(), vrx, leases)
            .run_on(sock, "eth7", std::future::pending())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("eth7"), "{e}");
    }

    #[test]
    fn bind_errors_say_what_to_check() {
        let e = bind_interface("nonexistent0", 0).unwrap_err().to_string();
        assert!(e.contains("nonexistent0") && e.contains("ip link show"), "{e}");
    }
}
