//! The DHCP decision: one datagram in, at most one reply out, no I/O.
//!
//! A request is decoded and checked into a [`Context`], then run through an ordered
//! [`Chain`] of [`Handler`]s (the shape of bluecatengineering/dora's plugins). Each
//! handler looks at the context, fills in what it knows and returns [`Action::Continue`],
//! [`Action::Respond`] or [`Action::NoResponse`] with the reason. The standard chain:
//!
//! 1. [`SelectSubnets`] — which subnets may be served: those of the receiving interface,
//!    or for a relayed request (`giaddr` set) the relayed subnet containing `giaddr`.
//! 2. [`RackTurn`] — of a rack's subnets (racks of the replicated state), keep those
//!    where it is this head's turn: it is the rack's first head, or every head before it
//!    is down or not serving the rack and this head is in contact with a quorum, or the
//!    client has waited ([`WAITED_SECS`]). Subnets of `wulfd.yaml` are always kept.
//! 3. [`KnownNode`] — the node whose network device has this MAC: its address (which must
//!    lie in one of those subnets), netmask, gateway, DNS (`dns` tag), hostname.
//! 4. [`ReleaseDecline`] — RELEASE/DECLINE are logged (and passed to the allocator for
//!    pool clients); they never get an answer.
//! 5. [`UnknownClient`] — unknown MACs only where a pool is configured: discovery of a
//!    `discoverable` node for PXE clients, else a pool address, both via [`LeaseAllocator`]
//!    (an ACK of a pool address is reported to it by [`Respond`] with `bind`).
//! 6. [`PxeBoot`] — the boot file: iPXE script URL (option 77 "iPXE" or option 175), UEFI
//!    HTTP boot URL (option 60 "HTTPClient", echoed), or the iPXE binary for the
//!    client's architecture (option 93) from TFTP at `siaddr`.
//! 7. [`Respond`] — DISCOVER→OFFER, REQUEST→ACK or NAK, INFORM→ACK without `yiaddr`.
//!
//! Keeping the decision pure makes every branch testable from fabricated packets; what
//! the rack rule knows of other heads comes in through [`RackHealth`].
//!
//! Where the reply goes ([`destination`], RFC 2131 §4.1): to the relay (`giaddr`, port
//! 67) when relayed; NAKs are broadcast; to `ciaddr` (port 68) when the client has an
//! address *inside the served subnet*; otherwise broadcast. RFC 2131 allows unicasting
//! to `yiaddr` when the broadcast bit is clear, but the client has no address yet, so
//! that needs an ARP entry written by the server (raw sockets or `SIOCSARP`); a
//! broadcast on the receiving link reaches every client and costs nothing extra on a
//! provisioning network.

use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::Decodable;

use super::config::{DhcpConfig, Interface, Subnet};
use super::lease::LeaseAllocator;
use super::MacAddr;
use crate::boot::view::{BootNode, BootView};
use crate::model::NetDev;

/// What a handler decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Go on with the next handler.
    Continue,
    /// `ctx.resp` is the reply; stop.
    Respond,
    /// Send nothing; stop.
    NoResponse(Skip),
}

/// Why a request got no reply (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Could not be decoded as a DHCP message.
    Malformed,
    /// A BOOTREPLY or other non-request.
    NotRequest,
    /// Not Ethernet with a 6-byte hardware address.
    NotEthernet,
    /// Plain BOOTP (no option 53): not served.
    NoMessageType,
    /// A message type a server does not answer (OFFER, ACK, lease query, ...).
    UnhandledType,
    /// More than 16 relay hops (RFC 1542).
    TooManyHops,
    /// `giaddr` set but no relayed subnet contains it.
    RelayNotAccepted,
    /// The receiving interface is not configured.
    InterfaceNotServed,
    /// The node's (or `ciaddr`'s) address is not in a subnet served where this arrived.
    NotServedHere,
    /// Unknown MAC and no pool to serve it from.
    UnknownClient,
    /// The pool has no free address.
    PoolExhausted,
    /// No pool address at hand yet (this head's first block is being reserved).
    PoolPending,
    /// The pool offered an address that belongs to a known node.
    PoolConflict,
    /// The lease store could not decide.
    AllocatorError,
    /// REQUEST selecting another server's offer.
    OtherServer,
    /// REQUEST with neither option 50 nor `ciaddr`.
    NoRequestedAddress,
    /// DHCPRELEASE (never answered).
    Released,
    /// DHCPDECLINE (never answered).
    Declined,
    /// A rack's earlier head is alive and serves the rack: it answers, not this one.
    NotOurTurn,
    /// Every earlier head of the rack looks down, but this head is cut off from the
    /// cluster's quorum, so it does not take the rack over (the majority side does).
    NoQuorum,
    /// This head lacks artifacts the rack's nodes need (it is still fetching them).
    NotReady,
    /// More requests from this MAC than `rate_limit` allows (see `limit`).
    RateLimited,
    /// The chain ended without a decision, or a handler panicked (a bug).
    Internal,
}

impl Skip {
    /// Every reason, in declaration order (`Skip::ALL[s as usize] == s`), for per-reason
    /// counters.
    pub const ALL: [Skip; 23] = [
        Skip::Malformed,
        Skip::NotRequest,
        Skip::NotEthernet,
        Skip::NoMessageType,
        Skip::UnhandledType,
        Skip::TooManyHops,
        Skip::RelayNotAccepted,
        Skip::InterfaceNotServed,
        Skip::NotServedHere,
        Skip::UnknownClient,
        Skip::PoolExhausted,
        Skip::PoolPending,
        Skip::PoolConflict,
        Skip::AllocatorError,
        Skip::OtherServer,
        Skip::NoRequestedAddress,
        Skip::Released,
        Skip::Declined,
        Skip::NotOurTurn,
        Skip::NoQuorum,
        Skip::NotReady,
        Skip::RateLimited,
        Skip::Internal,
    ];

    /// What an operator reads in logs and the drop summary. The reasons about a relay or
    /// an interface are followed there by its address or name.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Malformed => "malformed packet",
            Skip::NotRequest => "not a request (BOOTREPLY)",
            Skip::NotEthernet => "not ethernet",
            Skip::NoMessageType => "BOOTP without a DHCP message type",
            Skip::UnhandledType => "message type a server does not answer",
            Skip::TooManyHops => "more than 16 relay hops",
            Skip::RelayNotAccepted => "no subnet for relay",
            Skip::InterfaceNotServed => "no subnet for interface",
            Skip::NotServedHere => "node address not in a subnet served here",
            Skip::UnknownClient => "unknown MAC (no pool)",
            Skip::PoolExhausted => "pool exhausted",
            Skip::PoolPending => "pool block not reserved yet",
            Skip::PoolConflict => "pool address belongs to a node",
            Skip::AllocatorError => "lease store error",
            Skip::OtherServer => "client chose another server",
            Skip::NoRequestedAddress => "REQUEST without an address",
            Skip::Released => "RELEASE (never answered)",
            Skip::Declined => "DECLINE (never answered)",
            Skip::Internal => "internal error (a bug)",
            Skip::RateLimited => "too many requests from one MAC (boot.dhcp.rate_limit)",
            Skip::NotOurTurn => "an earlier head of the rack answers",
            Skip::NoQuorum => "rack's earlier heads down, but no quorum to take over",
            Skip::NotReady => "this head lacks artifacts the rack needs",
        }
    }
}

/// Where a reply is sent (the server maps this to socket addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The relay agent at `giaddr`, server port 67.
    Relay(Ipv4Addr),
    /// The client's own address (`ciaddr`), client port 68.
    Client(Ipv4Addr),
    /// Limited broadcast on the receiving link, port 68.
    Broadcast,
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub msg: Message,
    pub dest: Destination,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reply(Box<Reply>),
    Skip(Skip),
}

/// Where the client's address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A known node (its device's `ipaddr`).
    Node(String),
    /// An unknown MAC just bound to this discoverable node.
    Discovered(String),
    /// The dynamic pool.
    Pool,
}

/// What the client is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub origin: Origin,
}

/// The boot file decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// TFTP path or HTTP URL.
    pub file: String,
    /// Echo option 60 "HTTPClient" (required by UEFI HTTP boot clients).
    pub http_client: bool,
    /// The client runs iPXE: send its option 175.176 `no-pxedhcp` = 1. Our answer
    /// already carries the boot file, and without that flag iPXE waits 2 s after our
    /// OFFER for a ProxyDHCP server that does not exist — on every boot of every node.
    pub ipxe: bool,
}

/// One request on its way through the chain.
pub struct Context<'a> {
    pub req: &'a Message,
    pub kind: MessageType,
    pub mac: MacAddr,
    /// `mac` in the model's notation, for view lookups.
    pub mac_text: String,
    pub iface: &'a Interface,
    pub cfg: &'a DhcpConfig,
    pub view: &'a BootView,
    pub leases: &'a dyn LeaseAllocator,
    /// What this head knows of the other heads (for racks).
    pub health: &'a dyn RackHealth,
    /// Subnets that may be served for this request (set by [`SelectSubnets`]).
    pub candidates: Vec<&'a Subnet>,
    /// The subnet the client is in (set with `client`).
    pub subnet: Option<&'a Subnet>,
    pub client: Option<Assignment>,
    pub boot: Option<Boot>,
    pub resp: Option<Message>,
}

impl<'a> Context<'a> {
    /// Check the fixed fields every served request must have.
    pub fn new(
        req: &'a Message,
        iface: &'a Interface,
        cfg: &'a DhcpConfig,
        view: &'a BootView,
        leases: &'a dyn LeaseAllocator,
    ) -> Result<Context<'a>, Skip> {
        if req.opcode() != Opcode::BootRequest {
            return Err(Skip::NotRequest);
        }
        // Check hlen before chaddr(): dhcproto slices chaddr by hlen.
        if req.htype() != HType::Eth || req.hlen() != 6 {
            return Err(Skip::NotEthernet);
        }
        if req.hops() > 16 {
            return Err(Skip::TooManyHops);
        }
        let kind = req.opts().msg_type().ok_or(Skip::NoMessageType)?;
        if !matches!(
            kind,
            MessageType::Discover
                | MessageType::Request
                | MessageType::Inform
                | MessageType::Release
                | MessageType::Decline
        ) {
            return Err(Skip::UnhandledType);
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(req.chaddr());
        let mac = MacAddr(mac);
        Ok(Context {
            req,
            kind,
            mac,
            mac_text: mac.to_string(),
            iface,
            cfg,
            view,
            leases,
            health: &AllServing,
            candidates: Vec::new(),
            subnet: None,
            client: None,
            boot: None,
            resp: None,
        })
    }

    fn relayed(&self) -> bool {
        !self.req.giaddr().is_unspecified()
    }
}

/// One step of the chain.
pub trait Handler: Send + Sync {
    fn name(&self) -> &'static str;
    fn handle(&self, ctx: &mut Context<'_>) -> Action;
}

/// An ordered list of handlers.
pub struct Chain(Vec<Box<dyn Handler>>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Chain").field(&self.names()).finish()
    }
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("kind", &self.kind)
            .field("mac", &self.mac_text)
            .field("iface", &self.iface.name)
            .finish_non_exhaustive()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::standard()
    }
}

impl Chain {
    /// The handlers described in the module documentation, in that order.
    pub fn standard() -> Chain {
        Chain(vec![
            Box::new(SelectSubnets),
            Box::new(RackTurn),
            Box::new(KnownNode),
            Box::new(ReleaseDecline),
            Box::new(UnknownClient),
            Box::new(PxeBoot),
            Box::new(Respond),
        ])
    }

    /// A chain of the given handlers (tests, future policies).
    pub fn new(handlers: Vec<Box<dyn Handler>>) -> Chain {
        Chain(handlers)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|h| h.name()).collect()
    }

    pub fn run(&self, ctx: &mut Context<'_>) -> Verdict {
        for h in &self.0 {
            match h.handle(ctx) {
                Action::Continue => {}
                Action::NoResponse(s) => return Verdict::Skip(s),
                Action::Respond => {
                    let (Some(msg), Some(subnet)) = (ctx.resp.take(), ctx.subnet) else {
                        return Verdict::Skip(Skip::Internal);
                    };
                    let dest = destination(ctx.req, &msg, subnet);
                    return Verdict::Reply(Box::new(Reply { msg, dest }));
                }
            }
        }
        Verdict::Skip(Skip::Internal)
    }
}

/// Decode `bytes` received on `iface` and decide. Never panics: a bug in decoding or in
/// a handler costs this one request (counted as [`Skip::Internal`]), not the server.
pub fn handle_packet(
    bytes: &[u8],
    iface: &Interface,
    cfg: &DhcpConfig,
    view: &BootView,
    leases: &dyn LeaseAllocator,
    health: &dyn RackHealth,
    chain: &Chain,
) -> Verdict {
    // 236 bytes of BOOTP header + 4 of magic cookie; anything shorter is not DHCP.
    if bytes.len() < 240 || bytes[236..240] != [99, 130, 83, 99] || !options_well_formed(&bytes[240..]) {
        return Verdict::Skip(Skip::Malformed);
    }
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(req) = Message::from_bytes(bytes) else {
            return Verdict::Skip(Skip::Malformed);
        };
        match Context::new(&req, iface, cfg, view, leases) {
            Ok(mut ctx) => {
                ctx.health = health;
                chain.run(&mut ctx)
            }
            Err(s) => Verdict::Skip(s),
        }
    }))
    .unwrap_or(Verdict::Skip(Skip::Internal))
}

/// Walk the option TLVs before dhcproto decodes them: every option must fit in the
/// datagram, and the fixed-size options dhcproto only checks with `debug_assert!` must
/// have their size (so a hostile packet cannot even reach a debug-build panic).
fn options_well_formed(mut b: &[u8]) -> bool {
    while let Some((&code, rest)) = b.split_first() {
        match code {
            0 => b = rest,
            255 => return true,
            _ => {
                let Some((&len, rest)) = rest.split_first() else {
                    return false;
                };
                let len = usize::from(len);
                let size_ok = match code {
                    80 => len == 0,
                    81 => len >= 3,
                    94 => len == 3,
                    152..=155 => len == 4,
                    _ => true,
                };
                if !size_ok || rest.len() < len {
                    return false;
                }
                b = &rest[len..];
            }
        }
    }
    // No end option: tolerated (some clients omit it), everything parsed fitted.
    true
}

/// RFC 2131 §4.1 reply addressing (see the module documentation).
pub fn destination(req: &Message, resp: &Message, subnet: &Subnet) -> Destination {
    let giaddr = req.giaddr();
    if !giaddr.is_unspecified() {
        return Destination::Relay(giaddr);
    }
    if resp.opts().has_msg_type(MessageType::Nak) {
        return Destination::Broadcast;
    }
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() && subnet.network.contains(&ciaddr) && ciaddr != subnet.network.broadcast() {
        return Destination::Client(ciaddr);
    }
    Destination::Broadcast
}

/// Step 1: the subnets this request may be served from.
#[derive(Debug)]
pub struct SelectSubnets;

impl Handler for SelectSubnets {
    fn name(&self) -> &'static str {
        "select-subnets"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        if ctx.relayed() {
            match ctx.cfg.relayed_subnet(ctx.req.giaddr()) {
                Some(s) => ctx.candidates.push(s),
                None => return Action::NoResponse(Skip::RelayNotAccepted),
            }
        } else {
            let cfg = ctx.cfg;
            ctx.candidates
                .extend(ctx.iface.subnets.iter().filter_map(|&i| cfg.subnets.get(i)));
        }
        if ctx.candidates.is_empty() {
            return Action::NoResponse(Skip::InterfaceNotServed);
        }
        Action::Continue
    }
}

/// What the rack rule needs to know about the heads (see [`RackTurn`]). The daemon's
/// implementation probes the other heads (`boot::liveness`); tests give fixed answers.
pub trait RackHealth: Send + Sync {
    /// Whether head `id` is alive and serving `rack` now.
    fn serving(&self, id: u64, rack: &str) -> bool;
    /// Whether this head is in contact with a quorum of the cluster (so it may take a
    /// rack over from heads it cannot reach: the majority side of a partition does).
    fn in_quorum(&self) -> bool;
    /// Whether this head holds what `rack`'s nodes need (images, kernels, overlays): a
    /// head that lacks them does not answer, so the rack's next head does.
    fn ready(&self, _rack: &str) -> bool {
        true
    }
    /// Told by the server which racks this head serves now (its interfaces and the
    /// racks' addresses agree), so peers can learn it.
    fn set_served(&self, _racks: &std::collections::BTreeSet<String>) {}
    /// Whether an earlier packet of this transaction (client hardware address and
    /// `xid`) reached this head; called once per request, which it records. A waited
    /// client ([`WAITED_SECS`]) is taken over only when it retransmits: iPXE's `secs`
    /// counts from before link-up (and runs fast under emulation), so its *first*
    /// DISCOVER can carry `secs` ≥ 4, and answering that over a live primary makes two
    /// OFFERs. Default: yes (fixed answers decide by `secs` alone).
    fn retransmission(&self, _mac: &MacAddr, _xid: u32) -> bool {
        true
    }
}

/// Every head alive and serving, quorum reached: only a rack's first head answers.
#[derive(Debug, Clone, Copy)]
pub struct AllServing;

impl RackHealth for AllServing {
    fn serving(&self, _id: u64, _rack: &str) -> bool {
        true
    }
    fn in_quorum(&self) -> bool {
        true
    }
}

/// A client whose `secs` (seconds since it began acquiring) reached this, and that
/// retransmits (see [`RackHealth::retransmission`]), has waited for an answer that did
/// not come: every head of its rack in contact with the quorum answers it, whatever it
/// knows of the earlier ones (a head may look alive to its peers and still not reach
/// the rack). PXE ROMs, iPXE and dhclient retransmit after 4 s and later, so the
/// primary has had its chance.
pub const WAITED_SECS: u16 = 4;

/// Step 2: whose turn a rack is (see the module documentation).
#[derive(Debug)]
pub struct RackTurn;

impl RackTurn {
    /// Whether this head answers for `subnet` now, else why not; `waited`: the client
    /// has waited for an answer ([`WAITED_SECS`]).
    pub fn decide(subnet: &Subnet, waited: bool, health: &dyn RackHealth) -> Result<(), Skip> {
        let Some(order) = &subnet.rack else {
            return Ok(());
        };
        if !health.ready(&subnet.name) {
            return Err(Skip::NotReady);
        }
        let before = order.before_me();
        if before.is_empty() {
            // The primary answers even without quorum: its last applied state knows the
            // rack's nodes, and a partition must not leave the rack unserved.
            return Ok(());
        }
        if !waited && before.iter().any(|&h| health.serving(h, &subnet.name)) {
            return Err(Skip::NotOurTurn);
        }
        if !health.in_quorum() {
            return Err(Skip::NoQuorum);
        }
        Ok(())
    }
}

impl Handler for RackTurn {
    fn name(&self) -> &'static str {
        "rack-turn"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        let health = ctx.health;
        // Asked for every request, so that the first sighting of a transaction is recorded.
        let again = health.retransmission(&ctx.mac, ctx.req.xid());
        let waited = again && ctx.req.secs() >= WAITED_SECS;
        let mut why = None;
        ctx.candidates.retain(|s| match RackTurn::decide(s, waited, health) {
            Ok(()) => true,
            Err(skip) => {
                why.get_or_insert(skip);
                false
            }
        });
        match (ctx.candidates.is_empty(), why) {
            (true, Some(skip)) => Action::NoResponse(skip),
            _ => Action::Continue,
        }
    }
}

fn parse_ip(s: Option<&str>) -> Option<Ipv4Addr> {
    s.and_then(|s| s.trim().parse().ok())
}

/// The parameters of a node's device in `subnet`.
fn node_client(node: &BootNode, dev: &NetDev, addr: Ipv4Addr, subnet: &Subnet, origin: Origin) -> Assignment {
    let dns: Vec<Ipv4Addr> = node
        .conf
        .tags
        .get("dns")
        .map(|t| t.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    Assignment {
        addr,
        netmask: parse_ip(dev.netmask.as_deref()).unwrap_or(subnet.network.netmask()),
        router: parse_ip(dev.gateway.as_deref()).or(subnet.router),
        dns: if dns.is_empty() { subnet.dns.clone() } else { dns },
        hostname: Some(node.name.clone()),
        origin,
    }
}

/// Step 2: a node with a network device of this MAC.
#[derive(Debug)]
pub struct KnownNode;

impl Handler for KnownNode {
    fn name(&self) -> &'static str {
        "known-node"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        let Some(node) = ctx.view.node_by_mac(&ctx.mac_text) else {
            return Action::Continue;
        };
        let Some((_, dev)) = node.netdev_by_mac(&ctx.mac_text) else {
            return Action::Continue;
        };
        let Some(addr) = parse_ip(dev.ipaddr.as_deref()) else {
            // Known but without an IPv4 address: a pool may still serve it.
            tracing::debug!(node = %node.name, mac = %ctx.mac, "node device has no IPv4 address");
            return Action::Continue;
        };
        let Some(&subnet) = ctx.candidates.iter().find(|s| s.network.contains(&addr)) else {
            tracing::debug!(node = %node.name, %addr, iface = %ctx.iface.name, "node address not in a subnet served here");
            return Action::NoResponse(Skip::NotServedHere);
        };
        ctx.subnet = Some(subnet);
        ctx.client = Some(node_client(node, dev, addr, subnet, Origin::Node(node.name.clone())));
        Action::Continue
    }
}

/// Step 3: RELEASE and DECLINE are never answered.
#[derive(Debug)]
pub struct ReleaseDecline;

impl Handler for ReleaseDecline {
    fn name(&self) -> &'static str {
        "release-decline"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        let skip = match ctx.kind {
            MessageType::Release => Skip::Released,
            MessageType::Decline => Skip::Declined,
            _ => return Action::Continue,
        };
        let node = match &ctx.client {
            Some(Assignment {
                origin: Origin::Node(n),
                ..
            }) => Some(n.as_str()),
            _ => None,
        };
        if let Some(node) = node {
            if skip == Skip::Declined {
                tracing::warn!(%node, mac = %ctx.mac, "node declined its configured address: another host uses it");
            } else {
                tracing::info!(%node, mac = %ctx.mac, "node released its address");
            }
            return Action::NoResponse(skip);
        }
        // A pool client: give the address back / mark it bad.
        if let Some(subnet) = ctx.candidates.iter().find(|s| s.pool.is_some()) {
            let res = if skip == Skip::Declined {
                let ip = ctx
                    .req
                    .opts()
                    .get(OptionCode::RequestedIpAddress)
                    .and_then(|o| match o {
                        DhcpOption::RequestedIpAddress(ip) => Some(*ip),
                        _ => None,
                    });
                match ip {
                    Some(ip) => {
                        tracing::warn!(mac = %ctx.mac, %ip, subnet = %subnet.name, "pool address declined: in use by another host");
                        ctx.leases.decline(ctx.mac, ip, subnet)
                    }
                    None => Ok(()),
                }
            } else {
                ctx.leases.release(ctx.mac, ctx.req.ciaddr(), subnet)
            };
            if let Err(e) = res {
                tracing::warn!(mac = %ctx.mac, "{e}");
            }
        }
        Action::NoResponse(skip)
    }
}

/// Whether the client is a network-boot firmware or iPXE (only those may claim a
/// discoverable node: a stray DHCP client must not consume one).
fn is_boot_client(req: &Message) -> bool {
    let class = class_id(req).unwrap_or_default();
    is_ipxe(req) || class.starts_with(b"PXEClient") || class.starts_with(b"HTTPClient") || arch(req).is_some()
}

/// Step 4: unknown MACs, only where a pool is configured.
#[derive(Debug)]
pub struct UnknownClient;

impl Handler for UnknownClient {
    fn name(&self) -> &'static str {
        "unknown-client"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        if ctx.client.is_some() {
            return Action::Continue;
        }
        let ciaddr = ctx.req.ciaddr();
        let subnet = if ctx.kind == MessageType::Inform {
            ctx.candidates.iter().find(|s| s.network.contains(&ciaddr)).copied()
        } else {
            ctx.candidates.iter().find(|s| s.pool.is_some()).copied()
        };
        let Some(subnet) = subnet.filter(|s| s.pool.is_some()) else {
            return Action::NoResponse(Skip::UnknownClient);
        };
        let pool_client = |addr| Assignment {
            addr,
            netmask: subnet.network.netmask(),
            router: subnet.router,
            dns: subnet.dns.clone(),
            hostname: None,
            origin: Origin::Pool,
        };
        if ctx.kind == MessageType::Inform {
            ctx.subnet = Some(subnet);
            ctx.client = Some(pool_client(ciaddr));
            return Action::Continue;
        }
        if is_boot_client(ctx.req) && ctx.view.discoverable().next().is_some() {
            match ctx.leases.discover(ctx.mac, ctx.view) {
                Ok(Some(name)) => {
                    if let Some(found) = discovered(ctx, &name) {
                        return found;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(mac = %ctx.mac, "discovery failed: {e}"),
            }
        }
        match ctx.leases.allocate(ctx.mac, subnet, ctx.view) {
            Ok(Some(ip)) => {
                if let Some(owner) = ctx.view.node_by_ip(ip) {
                    tracing::warn!(%ip, node = %owner.name, subnet = %subnet.name,
                        "pool address belongs to a node; shrink the pool so it excludes node addresses");
                    return Action::NoResponse(Skip::PoolConflict);
                }
                ctx.subnet = Some(subnet);
                ctx.client = Some(pool_client(ip));
                Action::Continue
            }
            Ok(None) => {
                tracing::debug!(mac = %ctx.mac, subnet = %subnet.name, "no pool address at hand yet; the client will retry");
                Action::NoResponse(Skip::PoolPending)
            }
            Err(e @ super::lease::LeaseError::Exhausted { .. }) => {
                tracing::warn!(mac = %ctx.mac, "{e}");
                Action::NoResponse(Skip::PoolExhausted)
            }
            Err(e) => {
                tracing::warn!(mac = %ctx.mac, "{e}");
                Action::NoResponse(Skip::AllocatorError)
            }
        }
    }
}

/// The device a discovered node boots from: its primary network, else `default`, else
/// the first device with an IPv4 address.
fn discovered(ctx: &mut Context<'_>, name: &str) -> Option<Action> {
    let node = ctx.view.nodes.get(name)?;
    let devs = &node.conf.network_devices;
    let dev = node
        .conf
        .primary_network
        .as_deref()
        .and_then(|p| devs.get(p))
        .or_else(|| devs.get("default"))
        .filter(|d| parse_ip(d.ipaddr.as_deref()).is_some())
        .or_else(|| devs.values().find(|d| parse_ip(d.ipaddr.as_deref()).is_some()))?;
    let addr = parse_ip(dev.ipaddr.as_deref())?;
    let Some(&subnet) = ctx.candidates.iter().find(|s| s.network.contains(&addr)) else {
        tracing::warn!(node = %name, %addr, "discovered node's address is not in a subnet served here");
        return Some(Action::NoResponse(Skip::NotServedHere));
    };
    tracing::info!(node = %name, mac = %ctx.mac, %addr, "unknown MAC discovered as node");
    ctx.subnet = Some(subnet);
    ctx.client = Some(node_client(
        node,
        dev,
        addr,
        subnet,
        Origin::Discovered(name.to_owned()),
    ));
    Some(Action::Continue)
}

fn class_id(req: &Message) -> Option<&[u8]> {
    match req.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => Some(c),
        _ => None,
    }
}

/// iPXE announces itself with user class "iPXE" (raw, or RFC 3004 length-prefixed) and
/// its encapsulated option 175.
fn is_ipxe(req: &Message) -> bool {
    let uc = match req.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => u.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    };
    uc || req.opts().get(OptionCode::Unknown(IPXE_ENCAP)).is_some()
}

/// Client architecture: option 93, else the `Arch:NNNNN` field of a PXE class id.
fn arch(req: &Message) -> Option<u16> {
    if let Some(DhcpOption::ClientSystemArchitecture(a)) = req.opts().get(OptionCode::ClientSystemArchitecture) {
        return Some(a.0);
    }
    let c = class_id(req)?;
    let s = std::str::from_utf8(c).ok()?;
    let rest = s.split_once("Arch:")?.1;
    rest.get(..5)?.parse().ok()
}

/// iPXE's encapsulated option space (option 175) and its `no-pxedhcp` setting (176).
const IPXE_ENCAP: u8 = 175;
const IPXE_NO_PXEDHCP: u8 = 176;

/// Step 5: the boot file.
#[derive(Debug)]
pub struct PxeBoot;

impl Handler for PxeBoot {
    fn name(&self) -> &'static str {
        "pxe-boot"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        let Some(subnet) = ctx.subnet else {
            return Action::Continue;
        };
        let req = ctx.req;
        let class = class_id(req).unwrap_or_default();
        let http_client = class.starts_with(b"HTTPClient");
        ctx.boot = if is_ipxe(req) {
            Some(Boot {
                file: format!(
                    "{}{}",
                    subnet.http_base,
                    ctx.cfg.ipxe_url_path.replace("{mac}", &ctx.mac.hyphenated())
                ),
                http_client: false,
                ipxe: true,
            })
        } else if http_client || class.starts_with(b"PXEClient") || arch(req).is_some() {
            let a = arch(req);
            match a.and_then(|a| ctx.cfg.ipxe.get(&a)) {
                Some(bin) if http_client => Some(Boot {
                    file: format!("{}{}", subnet.http_base, ctx.cfg.http_boot_path.replace("{file}", bin)),
                    http_client,
                    ipxe: false,
                }),
                Some(bin) => Some(Boot {
                    file: bin.clone(),
                    http_client,
                    ipxe: false,
                }),
                None => {
                    tracing::warn!(mac = %ctx.mac, arch = ?a,
                        "network boot client of an architecture without an iPXE binary; add it to boot.dhcp.ipxe");
                    None
                }
            }
        } else {
            None
        };
        Action::Continue
    }
}

/// Step 6: build the reply for the message type.
#[derive(Debug)]
pub struct Respond;

impl Handler for Respond {
    fn name(&self) -> &'static str {
        "respond"
    }

    fn handle(&self, ctx: &mut Context<'_>) -> Action {
        let (Some(subnet), Some(client)) = (ctx.subnet, ctx.client.as_ref()) else {
            return Action::NoResponse(Skip::Internal);
        };
        let opts = ctx.req.opts();
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let msg = match ctx.kind {
            MessageType::Discover => full_reply(ctx, subnet, client, MessageType::Offer),
            MessageType::Request => {
                if server_id.is_some_and(|s| s != subnet.server) {
                    return Action::NoResponse(Skip::OtherServer);
                }
                let ciaddr = ctx.req.ciaddr();
                let wanted = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr));
                match wanted {
                    None => return Action::NoResponse(Skip::NoRequestedAddress),
                    Some(ip) if ip == client.addr => {
                        if client.origin == Origin::Pool {
                            // The lease starts with this ACK: record it.
                            if let Err(e) = ctx.leases.bind(ctx.mac, ip, subnet) {
                                tracing::warn!(mac = %ctx.mac, %ip, "{e}");
                            }
                        }
                        full_reply(ctx, subnet, client, MessageType::Ack)
                    }
                    Some(ip) => {
                        tracing::debug!(mac = %ctx.mac, requested = %ip, assigned = %client.addr, "NAK");
                        nak(ctx, subnet)
                    }
                }
            }
            MessageType::Inform => {
                let ciaddr = ctx.req.ciaddr();
                if !subnet.network.contains(&ciaddr) {
                    return Action::NoResponse(Skip::NotServedHere);
                }
                full_reply(ctx, subnet, client, MessageType::Ack)
            }
            _ => return Action::NoResponse(Skip::UnhandledType),
        };
        ctx.resp = Some(msg);
        Action::Respond
    }
}

/// Header and options every reply carries.
fn base_reply(req: &Message, mac: MacAddr, kind: MessageType, subnet: &Subnet) -> Message {
    let unspec = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(req.xid(), unspec, unspec, unspec, req.giaddr(), &mac.0);
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.flags());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(subnet.server));
    // RFC 3046: echo relay agent information; RFC 6842: echo the client identifier.
    for code in [OptionCode::RelayAgentInformation, OptionCode::ClientIdentifier] {
        if let Some(opt) = req.opts().get(code) {
            o.insert(opt.clone());
        }
    }
    m
}

fn nak(ctx: &Context<'_>, subnet: &Subnet) -> Message {
    let mut m = base_reply(ctx.req, ctx.mac, MessageType::Nak, subnet);
    if ctx.relayed() {
        // RFC 2131 §4.3.2: the relay must broadcast a NAK to the client.
        m.set_flags(ctx.req.flags().set_broadcast());
    }
    m.opts_mut().insert(DhcpOption::Message(
        "requested address is not assigned to this client".into(),
    ));
    m
}

fn full_reply(ctx: &Context<'_>, subnet: &Subnet, c: &Assignment, kind: MessageType) -> Message {
    let req = ctx.req;
    let mut m = base_reply(req, ctx.mac, kind, subnet);
    let inform = ctx.kind == MessageType::Inform;
    if inform {
        m.set_ciaddr(req.ciaddr());
    } else {
        m.set_yiaddr(c.addr);
        if ctx.kind == MessageType::Request {
            m.set_ciaddr(req.ciaddr());
        }
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::SubnetMask(c.netmask));
    let bits = u32::from(c.netmask);
    o.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(u32::from(c.addr) | !bits)));
    if let Some(r) = c.router {
        o.insert(DhcpOption::Router(vec![r]));
    }
    if !c.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(c.dns.clone()));
    }
    if let Some(h) = &c.hostname {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    if let Some(d) = &subnet.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if !inform {
        // RFC 2131 §4.3.5: no lease time in an answer to INFORM.
        o.insert(DhcpOption::AddressLeaseTime(subnet.lease_secs));
        o.insert(DhcpOption::Renewal(subnet.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(subnet.lease_secs / 8 * 7));
    }
    if let Some(boot) = &ctx.boot {
        m.set_siaddr(subnet.server);
        let asked_67 = match req.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => l.contains(&OptionCode::BootfileName),
            _ => false,
        };
        // The `file` field holds 128 bytes with its NUL; longer URLs only fit option 67.
        let fits = boot.file.len() < 128;
        if fits {
            m.set_fname_str(&boot.file);
        }
        if asked_67 || !fits {
            m.opts_mut()
                .insert(DhcpOption::BootfileName(boot.file.as_bytes().to_vec()));
        }
        if boot.http_client {
            m.opts_mut().insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
        }
        if boot.ipxe {
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAP),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
        }
    }
    m
}
