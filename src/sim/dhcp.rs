//! DHCP as a PXE ROM and then iPXE speak it: a sans-IO client ([`Dora`]) and one shared
//! UDP port that many simulated nodes use at once ([`DhcpPort`]).
//!
//! [`Dora`] turns time and received replies into packets to send, with no sockets or
//! clocks of its own, so every rule below is testable from fabricated packets:
//!
//! - **What is sent.** Every packet is a broadcast (flag set, no `ciaddr`) carrying the
//!   node's MAC as `chaddr`, option 61 (client id), 93 (architecture 0, BIOS), 94 (UNDI
//!   2.1), 60 `PXEClient:Arch:00000:UNDI:002001`, 97 (the SMBIOS UUID) and a parameter
//!   request list with 67. iPXE adds option 77 `iPXE` and its encapsulated option 175:
//!   that is what the head's handler chain (`boot::dhcp::handlers::PxeBoot`) looks at
//!   to answer with the iPXE script URL instead of the iPXE binary's TFTP path.
//! - **`secs` counts up** from the first DISCOVER of the exchange, in every DISCOVER and
//!   REQUEST (iPXE's `dhcp->start`). A rack's backup head answers a client that has
//!   waited 4 s and retransmits, so this is what makes a rack fail over.
//! - **Retransmission on iPXE's schedule** (`config/dhcp.h`: start 1 s, doubling, give
//!   up once the next wait would pass 10 s): DISCOVER at 0, 1, 3 and 7 s, then the
//!   exchange fails; the same for REQUEST. The schedule is a parameter.
//! - **OFFER selection like iPXE's `dhcp_discovery_rx`**: the first OFFER with an address
//!   is taken; if it carries iPXE's `no-pxedhcp` flag (175.176) the REQUEST goes at once,
//!   otherwise iPXE waits for ProxyDHCP offers until its discovery timer fires.
//! - **ACK acceptance like `dhcp_request_rx`**: only an ACK from the chosen server for the
//!   offered address completes the exchange; a NAK is counted and otherwise ignored
//!   (iPXE ignores it too and lets the REQUEST time out).
//!
//! [`DhcpPort`] is one UDP socket on port 68 (broadcast, `SO_REUSEADDR`, bound to the
//! namespace's interface) shared by every node: a receive task hands each reply to the
//! transaction registered under its `xid`, checked against its `chaddr`. Thousands of
//! nodes then cost one socket, not one namespace each.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::{Architecture, DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Encodable};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::SimError;

/// Which firmware is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// The NIC's PXE ROM: asks for a boot file (the iPXE binary, by TFTP).
    PxeRom,
    /// iPXE, loaded from that file: asks again and is given its script's URL.
    Ipxe,
}

/// iPXE's DHCP retransmission schedule: the waits after each transmission (1, 2, 4 and
/// 8 s; the exchange fails when the last one passes).
pub const IPXE_SCHEDULE: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// The PXE class identifier of a BIOS UNDI 2.1 client.
const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
/// iPXE's encapsulated option space and, inside it, the `no-pxedhcp` setting.
const IPXE_ENCAP: u8 = 175;
const IPXE_NO_PXEDHCP: u8 = 176;
/// Features iPXE announces in option 175 (priority, HTTP, DNS, TFTP, PXE extensions;
/// each `code, 1, 1`). The head only checks that the option is there.
const IPXE_FEATURES: [u8; 15] = [0x13, 1, 1, 0x11, 1, 1, 0x17, 1, 1, 0x15, 1, 1, 0x10, 1, 1];

/// A node as DHCP sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    /// SMBIOS UUID (option 97; iPXE's `${uuid}`).
    pub uuid: [u8; 16],
}

/// What an ACK gave the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `yiaddr`.
    pub addr: Ipv4Addr,
    /// Option 54: the head that answered.
    pub server: Ipv4Addr,
    /// `siaddr` (next-server: where TFTP goes).
    pub next_server: Ipv4Addr,
    /// `file`, else option 67: a TFTP path for the ROM, the script URL for iPXE.
    pub boot_file: Option<String>,
    pub netmask: Option<Ipv4Addr>,
    /// Option 12.
    pub hostname: Option<String>,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoraError {
    #[error(
        "no OFFER after {sent} DISCOVERs over {secs} s (is a head serving this rack, and is its DHCP on this link?)"
    )]
    NoOffer { sent: u32, secs: u64 },
    #[error("no ACK from {server} for {addr} after {sent} REQUESTs over {secs} s")]
    NoAck {
        server: Ipv4Addr,
        addr: Ipv4Addr,
        sent: u32,
        secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Selecting,
    Requesting { server: Ipv4Addr, addr: Ipv4Addr },
}

/// What to do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Broadcast these bytes, then wait until [`Dora::deadline`].
    Send(Vec<u8>),
    /// Nothing to send; keep waiting until [`Dora::deadline`].
    Wait,
    Done(Lease),
    Failed(DoraError),
}

/// One DISCOVER–OFFER–REQUEST–ACK exchange (sans-IO).
#[derive(Debug, Clone)]
pub struct Dora {
    id: Identity,
    firmware: Firmware,
    xid: u32,
    schedule: Vec<Duration>,
    /// When the first DISCOVER went (`secs` counts from here).
    started: Instant,
    phase: Phase,
    /// Transmissions in the current phase.
    sent: u32,
    /// When the current wait ends.
    deadline: Instant,
    /// An OFFER without `no-pxedhcp`: taken when the discovery timer fires.
    held_offer: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The OFFER's boot file and siaddr (used if the ACK lacks them).
    offer_msg: Option<Message>,
    /// Packets sent again after a timeout.
    pub retransmissions: u32,
    /// NAKs received (ignored, as iPXE does).
    pub naks: u32,
    /// OFFERs after the one taken (other heads answering too).
    pub extra_offers: u32,
}

fn secs_between(a: Instant, b: Instant) -> u16 {
    u16::try_from(b.saturating_duration_since(a).as_secs()).unwrap_or(u16::MAX)
}

impl Dora {
    /// An exchange with `xid` on `schedule` (non-empty). Call [`Dora::start`] next.
    pub fn new(id: Identity, firmware: Firmware, xid: u32, schedule: &[Duration], now: Instant) -> Dora {
        let schedule = if schedule.is_empty() {
            IPXE_SCHEDULE.to_vec()
        } else {
            schedule.to_vec()
        };
        Dora {
            id,
            firmware,
            xid,
            schedule,
            started: now,
            phase: Phase::Selecting,
            sent: 0,
            deadline: now,
            held_offer: None,
            offer_msg: None,
            retransmissions: 0,
            naks: 0,
            extra_offers: 0,
        }
    }

    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// When the current wait ends ([`Dora::on_timeout`] is due then).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The first DISCOVER.
    pub fn start(&mut self, now: Instant) -> Step {
        self.started = now;
        self.phase = Phase::Selecting;
        self.sent = 0;
        self.transmit(now)
    }

    /// Send the current phase's packet and arm its timer.
    fn transmit(&mut self, now: Instant) -> Step {
        let wait = self.schedule[(self.sent as usize).min(self.schedule.len() - 1)];
        self.sent += 1;
        self.deadline = now + wait;
        let msg = match self.phase {
            Phase::Selecting => self.packet(MessageType::Discover, now),
            Phase::Requesting { server, addr } => {
                let mut m = self.packet(MessageType::Request, now);
                m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                m.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
                m
            }
        };
        Step::Send(msg.to_vec().expect("a DHCP message encodes"))
    }

    /// A request as the firmware builds it (`secs` from the first DISCOVER).
    pub fn packet(&self, kind: MessageType, now: Instant) -> Message {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(self.xid, u, u, u, u, &self.id.mac);
        m.set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_flags(Flags::default().set_broadcast())
            .set_secs(secs_between(self.started, now));
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::MaxMessageSize(1472));
        let mut cid = vec![1u8];
        cid.extend_from_slice(&self.id.mac);
        o.insert(DhcpOption::ClientIdentifier(cid));
        o.insert(DhcpOption::ClientSystemArchitecture(Architecture(0)));
        o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
        o.insert(DhcpOption::ClassIdentifier(PXE_CLASS.to_vec()));
        let mut guid = vec![0u8];
        guid.extend_from_slice(&self.id.uuid);
        o.insert(DhcpOption::ClientMachineIdentifier(guid));
        o.insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
            OptionCode::DomainName,
            OptionCode::ClassIdentifier,
            OptionCode::BootfileName,
            OptionCode::ClientMachineIdentifier,
            OptionCode::Unknown(IPXE_ENCAP),
        ]));
        if self.firmware == Firmware::Ipxe {
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
            o.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAP),
                IPXE_FEATURES.to_vec(),
            )));
        }
        m
    }

    /// The wait ended with nothing accepted: retransmit, move on to REQUEST with a held
    /// OFFER, or give up.
    pub fn on_timeout(&mut self, now: Instant) -> Step {
        if let Some((server, addr)) = self.held_offer.take() {
            return self.request(server, addr, now);
        }
        if self.sent as usize >= self.schedule.len() {
            let secs = now.saturating_duration_since(self.started).as_secs();
            return Step::Failed(match self.phase {
                Phase::Selecting => DoraError::NoOffer { sent: self.sent, secs },
                Phase::Requesting { server, addr } => DoraError::NoAck {
                    server,
                    addr,
                    sent: self.sent,
                    secs,
                },
            });
        }
        self.retransmissions += 1;
        self.transmit(now)
    }

    fn request(&mut self, server: Ipv4Addr, addr: Ipv4Addr, now: Instant) -> Step {
        self.phase = Phase::Requesting { server, addr };
        self.sent = 0;
        self.transmit(now)
    }

    /// A reply for this transaction (already matched by `xid`); decides what follows.
    pub fn on_reply(&mut self, m: &Message, now: Instant) -> Step {
        if m.opcode() != Opcode::BootReply || m.xid() != self.xid || m.chaddr() != self.id.mac {
            return Step::Wait;
        }
        let server = match m.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Step::Wait,
        };
        match (m.opts().msg_type(), self.phase) {
            (Some(MessageType::Offer), Phase::Selecting) => {
                let addr = m.yiaddr();
                if addr.is_unspecified() {
                    return Step::Wait;
                }
                if self.offer_msg.is_some() {
                    self.extra_offers += 1;
                    return Step::Wait;
                }
                self.offer_msg = Some(m.clone());
                if self.firmware == Firmware::PxeRom || no_pxedhcp(m) {
                    self.request(server, addr, now)
                } else {
                    // iPXE waits for ProxyDHCP offers until its timer fires.
                    self.held_offer = Some((server, addr));
                    Step::Wait
                }
            }
            (Some(MessageType::Offer), Phase::Requesting { .. }) => {
                self.extra_offers += 1;
                Step::Wait
            }
            (Some(MessageType::Nak), _) => {
                self.naks += 1;
                Step::Wait
            }
            (Some(MessageType::Ack), Phase::Requesting { server: chosen, addr }) => {
                if server != chosen || m.yiaddr() != addr {
                    return Step::Wait;
                }
                Step::Done(self.lease(m, server))
            }
            _ => Step::Wait,
        }
    }

    fn lease(&self, ack: &Message, server: Ipv4Addr) -> Lease {
        let file = boot_file(ack).or_else(|| self.offer_msg.as_ref().and_then(boot_file));
        let next_server = if ack.siaddr().is_unspecified() {
            self.offer_msg
                .as_ref()
                .map(|o| o.siaddr())
                .unwrap_or(Ipv4Addr::UNSPECIFIED)
        } else {
            ack.siaddr()
        };
        Lease {
            addr: ack.yiaddr(),
            server,
            next_server,
            boot_file: file,
            netmask: match ack.opts().get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(m)) => Some(*m),
                _ => None,
            },
            hostname: match ack.opts().get(OptionCode::Hostname) {
                Some(DhcpOption::Hostname(h)) => Some(h.clone()),
                _ => None,
            },
        }
    }
}

/// The boot file: the `file` field, else option 67.
fn boot_file(m: &Message) -> Option<String> {
    let from_field = m
        .fname()
        .map(|f| String::from_utf8_lossy(f).trim_end_matches('\0').to_owned())
        .filter(|f| !f.is_empty());
    from_field.or_else(|| match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8_lossy(b).trim_end_matches('\0').to_owned()),
        _ => None,
    })
}

/// Whether an OFFER carries iPXE's `no-pxedhcp` = 1 (175.176).
fn no_pxedhcp(m: &Message) -> bool {
    match m.opts().get(OptionCode::Unknown(IPXE_ENCAP)) {
        Some(DhcpOption::Unknown(u)) => {
            let mut b = u.data();
            while let [code, len, rest @ ..] = b {
                let len = usize::from(*len);
                if rest.len() < len {
                    return false;
                }
                if *code == IPXE_NO_PXEDHCP && len >= 1 && rest[0] != 0 {
                    return true;
                }
                b = &rest[len..];
            }
            false
        }
        _ => false,
    }
}

/// Counters of a [`DhcpPort`].
#[derive(Debug, Default)]
pub struct PortStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Replies for no registered transaction (another client's, or too late).
    pub unmatched: AtomicU64,
    /// Replies dropped because the transaction's queue was full.
    pub overflow: AtomicU64,
}

type Waiters = Arc<Mutex<HashMap<u32, ([u8; 6], mpsc::Sender<Message>)>>>;

/// One UDP port 68 shared by every simulated node (see the module documentation).
#[derive(Debug)]
pub struct DhcpPort {
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    waiters: Waiters,
    rx: tokio::task::JoinHandle<()>,
    pub stats: Arc<PortStats>,
}

impl Drop for DhcpPort {
    fn drop(&mut self) {
        self.rx.abort();
    }
}

/// A registered exchange: replies to its `xid` arrive on `rx`; unregistered on drop.
#[derive(Debug)]
pub struct Transaction {
    pub xid: u32,
    rx: mpsc::Receiver<Message>,
    waiters: Waiters,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.waiters.lock().expect("dhcp waiters").remove(&self.xid);
    }
}

impl DhcpPort {
    /// `0.0.0.0:68` on `iface` (broadcast, `SO_REUSEADDR`, device-bound), sending to
    /// `255.255.255.255:67`. Needs root; call inside a tokio runtime.
    pub fn bind(iface: &str) -> Result<DhcpPort, SimError> {
        let sock = crate::boot::dhcp::bind_interface(iface, 68).map_err(|e| SimError::Dhcp {
            iface: iface.to_owned(),
            why: e.to_string(),
        })?;
        // Thousands of nodes' replies arrive in bursts (~2 KiB of buffer each): past
        // net.core.rmem_max (root may, and wwsim runs as root). Best effort: the default
        // buffer works too, it drops more under a storm (counted in the summary).
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&sock, 16 << 20);
        Ok(DhcpPort::on_socket(sock, SocketAddr::from((Ipv4Addr::BROADCAST, 67))))
    }

    /// A port on a socket the caller bound, sending to `to` (tests use loopback).
    pub fn on_socket(sock: UdpSocket, to: SocketAddr) -> DhcpPort {
        let sock = Arc::new(sock);
        let waiters: Waiters = Arc::default();
        let stats = Arc::new(PortStats::default());
        let rx = tokio::spawn(receive(sock.clone(), waiters.clone(), stats.clone()));
        DhcpPort {
            sock,
            to,
            waiters,
            rx,
            stats,
        }
    }

    /// Register an exchange for `mac` under a fresh `xid` drawn from `next_xid` (tried
    /// until one is free).
    pub fn register(&self, mac: [u8; 6], mut next_xid: impl FnMut() -> u32) -> Transaction {
        let (tx, rx) = mpsc::channel(16);
        let mut w = self.waiters.lock().expect("dhcp waiters");
        // Bounded: a u32 drawn at random collides with a few thousand live ones rarely.
        let mut xid = next_xid();
        for _ in 0..1000 {
            if !w.contains_key(&xid) {
                break;
            }
            xid = next_xid();
        }
        w.insert(xid, (mac, tx));
        Transaction {
            xid,
            rx,
            waiters: self.waiters.clone(),
        }
    }

    async fn send(&self, bytes: &[u8]) {
        // A send error (a full socket buffer) is a lost packet: the schedule retransmits.
        if self.sock.send_to(bytes, self.to).await.is_ok() {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run `dora` to its end on this port: at most the schedule's length in time per
    /// phase, and never past `deadline`.
    pub async fn exchange(&self, tx: &mut Transaction, dora: &mut Dora, deadline: Instant) -> Result<Lease, SimError> {
        let mut step = dora.start(Instant::now());
        loop {
            match step {
                Step::Send(bytes) => self.send(&bytes).await,
                Step::Wait => {}
                Step::Done(lease) => return Ok(lease),
                Step::Failed(e) => return Err(SimError::Dora(e)),
            }
            let until = dora.deadline().min(deadline);
            step = match tokio::time::timeout_at(until.into(), tx.rx.recv()).await {
                Ok(Some(m)) => dora.on_reply(&m, Instant::now()),
                Ok(None) => return Err(SimError::Stopped),
                Err(_) if Instant::now() >= deadline => return Err(SimError::Deadline("DHCP")),
                Err(_) => dora.on_timeout(Instant::now()),
            };
        }
    }
}

/// The receive loop: each reply to the transaction registered under its `xid` and `chaddr`.
/// Ends when the port is dropped (aborted).
async fn receive(sock: Arc<UdpSocket>, waiters: Waiters, stats: Arc<PortStats>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match sock.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(e) => {
                tracing::debug!("DHCP receive: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let Ok(m) = Message::from_bytes(&buf[..n]) else {
            continue;
        };
        if m.opcode() != Opcode::BootReply || m.hlen() != 6 {
            continue;
        }
        let target = waiters
            .lock()
            .expect("dhcp waiters")
            .get(&m.xid())
            .filter(|(mac, _)| m.chaddr() == mac)
            .map(|(_, tx)| tx.clone());
        match target {
            Some(tx) => {
                if tx.try_send(m).is_err() {
                    stats.overflow.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                stats.unmatched.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 7];
    const ID: Identity = Identity {
        mac: MAC,
        uuid: [7; 16],
    };

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn sent(step: Step) -> Message {
        match step {
            Step::Send(b) => Message::from_bytes(&b).unwrap(),
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    fn reply(kind: MessageType, xid: u32, yiaddr: &str, server: &str, ipxe_flag: bool) -> Message {
        let u = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, u, ip(yiaddr), ip(server), u, &MAC);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(ip(server)));
        m.set_fname_str("undionly.kpxe");
        if ipxe_flag {
            m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAP),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
        }
        m
    }

    #[test]
    fn discover_looks_like_the_firmware_and_secs_counts_up_on_ipxes_schedule() {
        let t0 = Instant::now();
        let mut d = Dora::new(ID, Firmware::Ipxe, 42, &IPXE_SCHEDULE, t0);
        let m = sent(d.start(t0));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(m.chaddr(), MAC);
        assert!(m.flags().broadcast());
        assert_eq!(m.secs(), 0);
        assert!(matches!(m.opts().get(OptionCode::UserClass), Some(DhcpOption::UserClass(u)) if u == b"iPXE"));
        assert!(m.opts().get(OptionCode::Unknown(IPXE_ENCAP)).is_some());
        assert!(matches!(
            m.opts().get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if a.0 == 0
        ));
        // Retransmissions at 1, 3 and 7 s carry secs 1, 3, 7; the fourth wait ends at 15 s.
        let mut at = t0;
        let mut secs = Vec::new();
        for wait in [1u64, 2, 4] {
            at += Duration::from_secs(wait);
            assert_eq!(d.deadline(), at);
            secs.push(sent(d.on_timeout(at)).secs());
        }
        assert_eq!(secs, [1, 3, 7]);
        assert_eq!(d.retransmissions, 3);
        at += Duration::from_secs(8);
        assert_eq!(d.deadline(), at);
        assert_eq!(d.on_timeout(at), Step::Failed(DoraError::NoOffer { sent: 4, secs: 15 }));
    }

    #[test]
    fn the_rom_has_no_ipxe_options() {
        let t0 = Instant::now();
        let d = Dora::new(ID, Firmware::PxeRom, 1, &IPXE_SCHEDULE, t0);
        let m = d.packet(MessageType::Discover, t0);
        assert!(m.opts().get(OptionCode::UserClass).is_none());
        assert!(m.opts().get(OptionCode::Unknown(IPXE_ENCAP)).is_none());
        assert!(
            matches!(m.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"))
        );
    }

    #[test]
    fn offer_then_ack_gives_the_lease_and_other_replies_are_ignored() {
        let t0 = Instant::now();
        let mut d = Dora::new(ID, Firmware::Ipxe, 9, &IPXE_SCHEDULE, t0);
        d.start(t0);
        // Another transaction's OFFER and one without an address are ignored.
        assert_eq!(
            d.on_reply(&reply(MessageType::Offer, 8, "10.0.0.5", "10.0.0.1", true), t0),
            Step::Wait
        );
        assert_eq!(
            d.on_reply(&reply(MessageType::Offer, 9, "0.0.0.0", "10.0.0.1", true), t0),
            Step::Wait
        );
        let t1 = t0 + Duration::from_millis(1500);
        let r = sent(d.on_reply(&reply(MessageType::Offer, 9, "10.0.0.5", "10.0.0.1", true), t1));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(r.secs(), 1, "secs keeps counting from the first DISCOVER");
        assert!(
            matches!(r.opts().get(OptionCode::ServerIdentifier), Some(DhcpOption::ServerIdentifier(s)) if *s == ip("10.0.0.1"))
        );
        assert!(
            matches!(r.opts().get(OptionCode::RequestedIpAddress), Some(DhcpOption::RequestedIpAddress(a)) if *a == ip("10.0.0.5"))
        );
        // A second head's OFFER is counted, a NAK ignored, an ACK from another server ignored.
        assert_eq!(
            d.on_reply(&reply(MessageType::Offer, 9, "10.0.0.5", "10.0.0.2", true), t1),
            Step::Wait
        );
        assert_eq!(
            d.on_reply(&reply(MessageType::Nak, 9, "0.0.0.0", "10.0.0.1", false), t1),
            Step::Wait
        );
        assert_eq!(
            d.on_reply(&reply(MessageType::Ack, 9, "10.0.0.5", "10.0.0.2", false), t1),
            Step::Wait
        );
        assert_eq!((d.extra_offers, d.naks), (1, 1));
        let Step::Done(l) = d.on_reply(&reply(MessageType::Ack, 9, "10.0.0.5", "10.0.0.1", false), t1) else {
            panic!("no lease");
        };
        assert_eq!(l.addr, ip("10.0.0.5"));
        assert_eq!(l.server, ip("10.0.0.1"));
        assert_eq!(l.next_server, ip("10.0.0.1"));
        assert_eq!(l.boot_file.as_deref(), Some("undionly.kpxe"));
    }

    #[test]
    fn ipxe_without_no_pxedhcp_waits_for_its_timer_before_requesting() {
        let t0 = Instant::now();
        let mut d = Dora::new(ID, Firmware::Ipxe, 3, &IPXE_SCHEDULE, t0);
        d.start(t0);
        assert_eq!(
            d.on_reply(&reply(MessageType::Offer, 3, "10.0.0.5", "10.0.0.1", false), t0),
            Step::Wait
        );
        let r = sent(d.on_timeout(d.deadline()));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(d.retransmissions, 0, "the REQUEST is not a retransmission");
    }

    #[test]
    fn an_unanswered_request_fails_after_the_schedule() {
        let t0 = Instant::now();
        let mut d = Dora::new(ID, Firmware::PxeRom, 5, &IPXE_SCHEDULE[..2], t0);
        d.start(t0);
        sent(d.on_reply(&reply(MessageType::Offer, 5, "10.0.0.5", "10.0.0.1", false), t0));
        let m = sent(d.on_timeout(d.deadline()));
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        let end = d.deadline();
        assert!(matches!(
            d.on_timeout(end),
            Step::Failed(DoraError::NoAck { sent: 2, .. })
        ));
    }

    #[test]
    fn no_pxedhcp_is_found_among_other_encapsulated_options() {
        let mut m = reply(MessageType::Offer, 1, "10.0.0.5", "10.0.0.1", false);
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(IPXE_ENCAP),
            vec![0x13, 1, 1, IPXE_NO_PXEDHCP, 1, 1],
        )));
        assert!(no_pxedhcp(&m));
        m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(IPXE_ENCAP),
            vec![IPXE_NO_PXEDHCP, 5, 1],
        )));
        assert!(!no_pxedhcp(&m), "a truncated option is not trusted");
    }

    /// The heads' DHCP decision (`boot::dhcp`) for node n1 = [`MAC`] at 10.99.0.11.
    mod against_the_heads_chain {
        use super::*;
        use crate::boot::dhcp::{handle_packet, AllServing, Chain, DhcpConfig, MemoryAllocator, Verdict};
        use crate::boot::view::BootView;
        use crate::state::{Command, Request, State};

        struct Head {
            cfg: DhcpConfig,
            view: BootView,
            leases: MemoryAllocator,
            chain: Chain,
        }

        pub(super) fn nodes_view(nodes: &str) -> BootView {
            let mut st = State::default();
            let conf = crate::model::parse_nodes_conf(nodes).unwrap();
            let r = st.apply(
                1,
                &Request {
                    id: None,
                    cmd: Command::Import { conf },
                    audit: None,
                },
            );
            assert!(r.0.is_ok(), "{r:?}");
            BootView::from_state(&st, 1)
        }

        fn head() -> Head {
            Head {
                cfg: DhcpConfig::from_yaml(
                    "interfaces: [{name: br0, subnets: [rack1]}]\nsubnets: {rack1: {network: 10.99.0.0/24, server: 10.99.0.1}}",
                )
                .unwrap(),
                view: nodes_view(
                    "nodes:\n  n1:\n    network devices:\n      default: {hwaddr: \"02:00:00:00:00:07\", ipaddr: 10.99.0.11}\n",
                ),
                leases: MemoryAllocator::new(),
                chain: Chain::standard(),
            }
        }

        impl Head {
            fn answer(&self, bytes: &[u8]) -> Message {
                let iface = self.cfg.interface("br0").unwrap();
                match handle_packet(
                    bytes,
                    iface,
                    &self.cfg,
                    &self.view,
                    &self.leases,
                    &AllServing,
                    &self.chain,
                ) {
                    Verdict::Reply(r) => Message::from_bytes(&r.msg.to_vec().unwrap()).unwrap(),
                    Verdict::Skip(s) => panic!("the head did not answer: {}", s.as_str()),
                }
            }

            /// A whole exchange of `fw`, every packet through the head.
            fn lease(&self, fw: Firmware) -> Lease {
                let t0 = Instant::now();
                let mut d = Dora::new(ID, fw, 77, &IPXE_SCHEDULE, t0);
                let mut step = d.start(t0);
                for _ in 0..4 {
                    step = match step {
                        Step::Send(b) => d.on_reply(&self.answer(&b), t0),
                        Step::Done(l) => return l,
                        other => panic!("{other:?}"),
                    };
                }
                panic!("no lease after four packets: {step:?}");
            }
        }

        #[test]
        fn the_rom_is_given_the_ipxe_binary_and_ipxe_its_script() {
            let h = head();
            let rom = h.lease(Firmware::PxeRom);
            assert_eq!(rom.addr, ip("10.99.0.11"));
            assert_eq!((rom.server, rom.next_server), (ip("10.99.0.1"), ip("10.99.0.1")));
            assert_eq!(
                rom.boot_file.as_deref(),
                Some("undionly.kpxe"),
                "arch 0 gets the BIOS binary"
            );
            assert_eq!(rom.hostname.as_deref(), Some("n1"));
            let ipxe = h.lease(Firmware::Ipxe);
            assert_eq!(ipxe.addr, rom.addr);
            assert_eq!(
                ipxe.boot_file.as_deref(),
                Some("http://10.99.0.1:9873/ipxe/02-00-00-00-00-07?assetkey=${asset}&uuid=${uuid}")
            );
        }
    }

    #[tokio::test]
    async fn nodes_share_one_port_against_the_heads_server_on_loopback() {
        use crate::boot::dhcp::{DhcpConfig, DhcpServer, MemoryAllocator, Ports};
        // Three nodes on one client socket; the head's server on another, its broadcasts
        // sent to the client socket's port on loopback.
        let cfg = DhcpConfig::from_yaml(
            "interfaces: [{name: lo, subnets: [lo]}]\nsubnets: {lo: {network: 127.0.0.0/8, server: 127.0.0.1}}",
        )
        .unwrap();
        let nodes: String = (1..=3)
            .map(|i| format!("  n{i}:\n    network devices:\n      default: {{hwaddr: \"02:00:00:00:01:0{i}\", ipaddr: 127.0.1.{i}}}\n"))
            .collect();
        let view = against_the_heads_chain::nodes_view(&format!("nodes:\n{nodes}"));
        let server_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (_vtx, vrx) = tokio::sync::watch::channel(Arc::new(view));
        let server = DhcpServer {
            ports: Ports {
                server: 67,
                client: client_sock.local_addr().unwrap().port(),
                broadcast: Ipv4Addr::LOCALHOST,
            },
            ..DhcpServer::new(cfg, vrx, Arc::new(MemoryAllocator::new()))
        };
        let to = server_sock.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_on(server_sock, "lo", async {
            let _ = stopped.await;
        }));
        let port = Arc::new(DhcpPort::on_socket(client_sock, to));
        let mut tasks = Vec::new();
        for i in 1..=3u8 {
            let port = port.clone();
            tasks.push(tokio::spawn(async move {
                let id = Identity {
                    mac: [2, 0, 0, 0, 1, i],
                    uuid: [i; 16],
                };
                let mut xid = u32::from(i);
                let mut tx = port.register(id.mac, || {
                    xid += 1000;
                    xid
                });
                let mut d = Dora::new(id, Firmware::Ipxe, tx.xid, &IPXE_SCHEDULE, Instant::now());
                port.exchange(&mut tx, &mut d, Instant::now() + Duration::from_secs(10))
                    .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let lease = t.await.unwrap().unwrap();
            assert_eq!(lease.addr, format!("127.0.1.{}", i + 1).parse::<Ipv4Addr>().unwrap());
        }
        // Each node's replies went to it alone: the broadcasts were sorted by xid.
        assert_eq!(port.stats.unmatched.load(Ordering::Relaxed), 0);
        assert_eq!(
            port.stats.received.load(Ordering::Relaxed),
            6,
            "an OFFER and an ACK each"
        );
        assert_eq!(port.stats.sent.load(Ordering::Relaxed), 6);
        let _ = stop.send(());
    }
}
