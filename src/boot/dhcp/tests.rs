//! Handler-chain tests from fabricated packets (built and encoded with dhcproto, then
//! fed through [`handle_packet`] exactly as the server does).

use std::net::Ipv4Addr;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use dhcproto::{Decodable, Encodable};

use super::*;
use crate::boot::view::BootView;
use crate::state::{Command, Request, State};

const CONF: &str = r#"
interfaces:
  - {name: br0, subnets: [rack1]}
  - {name: br1, subnets: [rack2]}
subnets:
  rack1:
    network: 10.99.0.0/24
    server: 10.99.0.1
    router: 10.99.0.254
    dns: [10.99.0.1]
    domain: cluster.local
    lease_time: 1h
  rack2:
    network: 10.98.0.0/24
    server: 10.98.0.1
    pool: {start: 10.98.0.100, end: 10.98.0.101}
  remote:
    network: 10.50.0.0/16
    server: 10.99.0.1
    router: 10.50.0.1
    relayed: true
"#;

const NODES: &str = r#"
nodes:
  n1:
    tags: {dns: "10.1.1.1, 10.1.1.2"}
    network devices:
      default: {hwaddr: "aa:bb:cc:00:00:01", ipaddr: 10.99.0.11}
  n2:
    network devices:
      default: {hwaddr: "aa:bb:cc:00:00:02", ipaddr: 10.99.0.12, netmask: 255.255.0.0, gateway: 10.99.0.250}
  r1:
    network devices:
      default: {hwaddr: "aa:bb:cc:00:00:03", ipaddr: 10.50.1.5}
  far:
    network devices:
      default: {hwaddr: "aa:bb:cc:00:00:04", ipaddr: 10.77.0.5}
  spare:
    discoverable: true
    network devices:
      default: {ipaddr: 10.98.0.40}
"#;

const N1: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 0, 1];
const N2: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 0, 2];
const R1: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 0, 3];
const FAR: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 0, 4];
const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

struct Env {
    cfg: DhcpConfig,
    view: BootView,
    leases: MemoryAllocator,
    chain: Chain,
}

fn env() -> Env {
    let mut st = State::default();
    let conf = crate::model::parse_nodes_conf(NODES).unwrap();
    let r = st.apply(
        1,
        &Request {
            audit: None,
            id: None,
            cmd: Command::Import { conf },
        },
    );
    assert!(r.0.is_ok(), "{r:?}");
    Env {
        cfg: DhcpConfig::from_yaml(CONF).unwrap(),
        view: BootView::from_state(&st, 1),
        leases: MemoryAllocator::new(),
        chain: Chain::standard(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn msg(kind: MessageType, mac: [u8; 6]) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(0x1234_5678, u, u, u, u, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn pxe(mut m: Message, arch: u16) -> Message {
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes(),
    ));
    m
}

impl Env {
    fn on(&self, iface: &str, m: &Message) -> Verdict {
        let bytes = m.to_vec().unwrap();
        self.raw(iface, &bytes)
    }

    fn raw(&self, iface: &str, bytes: &[u8]) -> Verdict {
        let i = self.cfg.interface(iface).unwrap();
        handle_packet(bytes, i, &self.cfg, &self.view, &self.leases, &AllServing, &self.chain)
    }

    /// The reply, re-decoded from its wire form as a client would see it.
    fn reply(&self, iface: &str, m: &Message) -> (Message, Destination) {
        match self.on(iface, m) {
            Verdict::Reply(r) => {
                let wire = r.msg.to_vec().unwrap();
                (Message::from_bytes(&wire).unwrap(), r.dest)
            }
            Verdict::Skip(s) => panic!("expected a reply, got no response: {}", s.as_str()),
        }
    }

    fn skip(&self, iface: &str, m: &Message) -> Skip {
        match self.on(iface, m) {
            Verdict::Skip(s) => s,
            Verdict::Reply(r) => panic!("expected no response, got {:?}", r.msg.opts().msg_type()),
        }
    }
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

/// The `file` field as a client reads it (dhcproto 0.15 keeps the terminating NUL).
fn fname(m: &Message) -> &str {
    m.fname_str().and_then(|r| r.ok()).unwrap_or("").trim_end_matches('\0')
}

#[test]
fn chain_order_is_documented_order() {
    assert_eq!(
        Chain::standard().names(),
        [
            "select-subnets",
            "rack-turn",
            "known-node",
            "release-decline",
            "unknown-client",
            "pxe-boot",
            "respond"
        ]
    );
}

#[test]
fn bios_discover_gets_the_node_address_and_undionly() {
    let e = env();
    let (r, dest) = e.reply("br0", &pxe(msg(MessageType::Discover, N1), 0));
    assert_eq!(r.opcode(), Opcode::BootReply);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.xid(), 0x1234_5678);
    assert_eq!(r.chaddr(), N1);
    assert_eq!(r.yiaddr(), ip("10.99.0.11"));
    assert_eq!(r.siaddr(), ip("10.99.0.1"), "next-server");
    assert_eq!(fname(&r), "undionly.kpxe");
    assert_eq!(dest, Destination::Broadcast, "no address yet, no ARP entry: broadcast");
    assert_eq!(
        opt(&r, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.255.0")))
    );
    assert_eq!(
        opt(&r, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.99.0.254")]))
    );
    assert_eq!(
        opt(&r, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip("10.1.1.1"), ip("10.1.1.2")])),
        "the node's dns tag wins over the subnet"
    );
    assert_eq!(opt(&r, OptionCode::Hostname), Some(&DhcpOption::Hostname("n1".into())));
    assert_eq!(
        opt(&r, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("cluster.local".into()))
    );
    assert_eq!(
        opt(&r, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opt(&r, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(ip("10.99.0.1")))
    );
    assert!(
        opt(&r, OptionCode::ClassIdentifier).is_none(),
        "PXEClient is not echoed"
    );
}

#[test]
fn device_netmask_and_gateway_override_the_subnet() {
    let e = env();
    let (r, _) = e.reply("br0", &msg(MessageType::Discover, N2));
    assert_eq!(r.yiaddr(), ip("10.99.0.12"));
    assert_eq!(
        opt(&r, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.0.0")))
    );
    assert_eq!(
        opt(&r, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.99.0.250")]))
    );
    assert_eq!(
        opt(&r, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip("10.99.0.1")]))
    );
    assert_eq!(fname(&r), "", "not a network-boot client: no boot file");
    assert_eq!(r.siaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn uefi_and_arm64_get_their_binaries() {
    let e = env();
    for (arch, file) in [(7, "snponly.efi"), (9, "snponly.efi"), (0xB, "arm64-efi/snponly.efi")] {
        let (r, _) = e.reply("br0", &pxe(msg(MessageType::Discover, N1), arch));
        assert_eq!(fname(&r), file, "arch {arch}");
    }
    // Arch from the class id alone (no option 93).
    let mut m = msg(MessageType::Discover, N1);
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    assert_eq!(fname(&e.reply("br0", &m).0), "snponly.efi");
    // An architecture without a binary: an address, no boot file.
    let (r, _) = e.reply("br0", &pxe(msg(MessageType::Discover, N1), 0x19));
    assert_eq!((r.yiaddr(), fname(&r)), (ip("10.99.0.11"), ""));
}

#[test]
fn ipxe_gets_the_script_url_of_its_mac() {
    let e = env();
    let want = "http://10.99.0.1:9873/ipxe/aa-bb-cc-00-00-01?assetkey=${asset}&uuid=${uuid}";
    let mut m = pxe(msg(MessageType::Discover, N1), 7);
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (r, _) = e.reply("br0", &m);
    assert_eq!(fname(&r), want);
    // iPXE is told not to wait for ProxyDHCP offers (175.176 no-pxedhcp = 1), on the wire.
    let wire = Encodable::to_vec(&r).unwrap();
    let back = <Message as Decodable>::from_bytes(&wire).unwrap();
    assert_eq!(
        opt(&back, OptionCode::Unknown(175)),
        Some(&DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1]
        ))),
        "no-pxedhcp for iPXE"
    );
    // Option 175 alone is enough.
    let mut m = msg(MessageType::Request, N1);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.99.0.11")));
    m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::Unknown(175),
        vec![0xb1, 1, 1],
    )));
    m.opts_mut()
        .insert(DhcpOption::ParameterRequestList(vec![OptionCode::BootfileName]));
    let (r, _) = e.reply("br0", &m);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(fname(&r), want);
    assert_eq!(
        opt(&r, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(want.as_bytes().to_vec())),
        "option 67 when asked for"
    );
}

#[test]
fn uefi_http_boot_gets_a_url_and_the_class_echoed() {
    let e = env();
    let mut m = msg(MessageType::Discover, N1);
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::X64_Http));
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
    ));
    let (r, _) = e.reply("br0", &m);
    assert_eq!(fname(&r), "http://10.99.0.1:9873/efiboot/snponly.efi");
    assert_eq!(
        opt(&r, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert_eq!(opt(&r, OptionCode::Unknown(175)), None, "iPXE's options only for iPXE");
}

#[test]
fn relayed_requests_are_matched_by_giaddr_and_answered_to_the_relay() {
    let e = env();
    let mut m = pxe(msg(MessageType::Discover, R1), 0);
    m.set_giaddr(ip("10.50.0.1")).set_hops(1);
    let (r, dest) = e.reply("br0", &m);
    assert_eq!(dest, Destination::Relay(ip("10.50.0.1")));
    assert_eq!(r.giaddr(), ip("10.50.0.1"));
    assert_eq!(r.yiaddr(), ip("10.50.1.5"));
    assert_eq!(
        opt(&r, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.50.0.1")]))
    );
    assert_eq!(
        opt(&r, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.0.0")))
    );
    // A relay from a network nobody configured as relayed.
    m.set_giaddr(ip("10.60.0.1"));
    assert_eq!(e.skip("br0", &m), Skip::RelayNotAccepted);
    // rack1 is served directly, not through relays.
    let mut m = msg(MessageType::Discover, N1);
    m.set_giaddr(ip("10.99.0.254"));
    assert_eq!(e.skip("br0", &m), Skip::RelayNotAccepted);
    // A relayed node whose address is outside the relay's subnet.
    let mut m = msg(MessageType::Discover, N1);
    m.set_giaddr(ip("10.50.0.1"));
    assert_eq!(e.skip("br0", &m), Skip::NotServedHere);
    // A relayed NAK asks the relay to broadcast.
    let mut m = msg(MessageType::Request, R1);
    m.set_giaddr(ip("10.50.0.1"));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.50.1.6")));
    let (r, dest) = e.reply("br0", &m);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(dest, Destination::Relay(ip("10.50.0.1")));
    assert!(r.flags().broadcast());
}

#[test]
fn unconfigured_subnets_get_no_reply() {
    let e = env();
    assert_eq!(e.skip("br0", &msg(MessageType::Discover, FAR)), Skip::NotServedHere);
    assert_eq!(
        e.skip("br1", &msg(MessageType::Discover, N1)),
        Skip::NotServedHere,
        "rack1 is not on br1"
    );
    let lonely = Interface {
        name: "eth9".into(),
        subnets: vec![],
    };
    let bytes = msg(MessageType::Discover, N1).to_vec().unwrap();
    let out = handle_packet(&bytes, &lonely, &e.cfg, &e.view, &e.leases, &AllServing, &e.chain);
    assert_eq!(out, Verdict::Skip(Skip::InterfaceNotServed));
}

#[test]
fn unknown_macs_only_from_a_pool_until_it_is_exhausted() {
    let e = env();
    assert_eq!(
        e.skip("br0", &msg(MessageType::Discover, STRANGER)),
        Skip::UnknownClient,
        "no pool on br0"
    );
    let (r, _) = e.reply("br1", &msg(MessageType::Discover, STRANGER));
    assert_eq!(r.yiaddr(), ip("10.98.0.100"));
    assert!(opt(&r, OptionCode::Hostname).is_none());
    let mut req = msg(MessageType::Request, STRANGER);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.98.0.100")));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(ip("10.98.0.1")));
    let (r, _) = e.reply("br1", &req);
    assert_eq!(
        (r.opts().msg_type(), r.yiaddr()),
        (Some(MessageType::Ack), ip("10.98.0.100"))
    );
    let other = [2, 0, 0, 0, 0, 0x98];
    assert_eq!(
        e.reply("br1", &msg(MessageType::Discover, other)).0.yiaddr(),
        ip("10.98.0.101")
    );
    assert_eq!(
        e.skip("br1", &msg(MessageType::Discover, [2, 0, 0, 0, 0, 0x97])),
        Skip::PoolExhausted
    );
    assert_eq!(e.leases.leased("rack2"), 2);
    // Releasing gives the address back to the pool.
    assert_eq!(e.skip("br1", &msg(MessageType::Release, other)), Skip::Released);
    assert_eq!(
        e.reply("br1", &msg(MessageType::Discover, [2, 0, 0, 0, 0, 0x97]))
            .0
            .yiaddr(),
        ip("10.98.0.101")
    );
}

#[test]
fn a_pxe_booting_unknown_mac_discovers_a_discoverable_node() {
    let e = env();
    let (r, _) = e.reply("br1", &pxe(msg(MessageType::Discover, STRANGER), 7));
    assert_eq!(r.yiaddr(), ip("10.98.0.40"));
    assert_eq!(
        opt(&r, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("spare".into()))
    );
    assert_eq!(fname(&r), "snponly.efi");
    assert_eq!(e.leases.leased("rack2"), 0, "no pool address used");
    // Once taken, the next PXE client gets a pool address.
    let (r, _) = e.reply("br1", &pxe(msg(MessageType::Discover, [2, 0, 0, 0, 0, 0x42]), 7));
    assert_eq!(r.yiaddr(), ip("10.98.0.100"));
}

#[test]
fn requests_are_acked_only_for_the_clients_address() {
    let e = env();
    let mut m = msg(MessageType::Request, N1);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.99.0.11")));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(ip("10.99.0.1")));
    let (r, dest) = e.reply("br0", &m);
    assert_eq!(
        (r.opts().msg_type(), r.yiaddr()),
        (Some(MessageType::Ack), ip("10.99.0.11"))
    );
    assert_eq!(dest, Destination::Broadcast);

    let mut wrong = msg(MessageType::Request, N1);
    wrong
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.99.0.99")));
    let (r, dest) = e.reply("br0", &wrong);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(dest, Destination::Broadcast, "NAKs are broadcast");
    assert!(opt(&r, OptionCode::AddressLeaseTime).is_none());

    m.opts_mut().insert(DhcpOption::ServerIdentifier(ip("10.99.0.2")));
    assert_eq!(e.skip("br0", &m), Skip::OtherServer);

    // Renewing: ciaddr, no option 50; the ACK goes to the client's address.
    let mut renew = msg(MessageType::Request, N1);
    renew.set_ciaddr(ip("10.99.0.11"));
    let (r, dest) = e.reply("br0", &renew);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(dest, Destination::Client(ip("10.99.0.11")));
    renew.set_ciaddr(ip("10.99.0.13"));
    assert_eq!(e.reply("br0", &renew).0.opts().msg_type(), Some(MessageType::Nak));

    assert_eq!(e.skip("br0", &msg(MessageType::Request, N1)), Skip::NoRequestedAddress);
    assert_eq!(e.skip("br0", &msg(MessageType::Request, STRANGER)), Skip::UnknownClient);
}

#[test]
fn broadcast_flag_and_foreign_ciaddr_are_broadcast() {
    let e = env();
    let mut m = msg(MessageType::Discover, N1);
    m.set_flags(Flags::default().set_broadcast());
    let (r, dest) = e.reply("br0", &m);
    assert!(r.flags().broadcast());
    assert_eq!(dest, Destination::Broadcast);
    // A ciaddr outside the served subnet is never a unicast target.
    m.set_ciaddr(ip("192.0.2.7"));
    assert_eq!(e.reply("br0", &m).1, Destination::Broadcast);
}

#[test]
fn inform_is_acked_without_an_address_or_lease() {
    let e = env();
    let mut m = msg(MessageType::Inform, N1);
    m.set_ciaddr(ip("10.99.0.11"));
    let (r, dest) = e.reply("br0", &m);
    assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.ciaddr(), ip("10.99.0.11"));
    assert!(opt(&r, OptionCode::AddressLeaseTime).is_none());
    assert!(opt(&r, OptionCode::Router).is_some());
    assert_eq!(dest, Destination::Client(ip("10.99.0.11")));
    // From outside every served subnet: nothing.
    m.set_ciaddr(ip("192.0.2.7"));
    assert_eq!(e.skip("br0", &m), Skip::NotServedHere);
}

#[test]
fn release_and_decline_are_never_answered() {
    let e = env();
    assert_eq!(e.skip("br0", &msg(MessageType::Release, N1)), Skip::Released);
    let mut d = msg(MessageType::Decline, N1);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.99.0.11")));
    assert_eq!(e.skip("br0", &d), Skip::Declined);
    // A declined pool address is never offered again.
    let (r, _) = e.reply("br1", &msg(MessageType::Discover, STRANGER));
    let mut d = msg(MessageType::Decline, STRANGER);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(r.yiaddr()));
    assert_eq!(e.skip("br1", &d), Skip::Declined);
    assert_ne!(
        e.reply("br1", &msg(MessageType::Discover, STRANGER)).0.yiaddr(),
        r.yiaddr()
    );
}

#[test]
fn not_served_kinds_of_packets() {
    let e = env();
    let mut m = msg(MessageType::Discover, N1);
    m.set_opcode(Opcode::BootReply);
    assert_eq!(e.skip("br0", &m), Skip::NotRequest);
    let mut m = msg(MessageType::Discover, N1);
    m.set_hops(17).set_giaddr(ip("10.50.0.1"));
    assert_eq!(e.skip("br0", &m), Skip::TooManyHops);
    let mut m = msg(MessageType::Discover, N1);
    m.set_chaddr(&[1; 16]);
    assert_eq!(e.skip("br0", &m), Skip::NotEthernet);
    let mut m = msg(MessageType::Offer, N1);
    assert_eq!(e.skip("br0", &m), Skip::UnhandledType);
    m.opts_mut().remove(OptionCode::MessageType);
    assert_eq!(e.skip("br0", &m), Skip::NoMessageType, "plain BOOTP");
}

/// A small deterministic generator (no dependency needed for fuzz-style loops).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_bytes_never_panic_and_never_get_a_reply() {
    let e = env();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Random garbage of every small size, with and without a valid magic cookie.
    for i in 0..3000 {
        let len = (rng.next() % 700) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && len >= 240 {
            b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        }
        match e.raw("br0", &b) {
            Verdict::Skip(s) => assert_ne!(s, Skip::Internal, "a panic was caught for {b:02x?}"),
            Verdict::Reply(r) => panic!("garbage got a reply: {r:?}"),
        }
    }
    // Every truncation of a valid request, and single-byte corruptions of it.
    let mut m = pxe(msg(MessageType::Discover, N1), 7);
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    m.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(Default::default()));
    let good = m.to_vec().unwrap();
    for n in 0..good.len() {
        if let Verdict::Skip(s) = e.raw("br0", &good[..n]) {
            assert_ne!(s, Skip::Internal);
        }
    }
    assert!(matches!(e.raw("br0", &good[..239]), Verdict::Skip(Skip::Malformed)));
    for _ in 0..5000 {
        let mut b = good.clone();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() as usize) % b.len();
            b[at] = rng.next() as u8;
        }
        if let Verdict::Skip(s) = e.raw("br0", &b) {
            assert_ne!(s, Skip::Internal, "a panic was caught for {b:02x?}");
        }
    }
}

#[test]
fn long_boot_urls_move_to_option_67() {
    let mut e = env();
    e.cfg.ipxe_url_path = format!("/ipxe/{{mac}}?{}", "x".repeat(120));
    let mut m = msg(MessageType::Discover, N1);
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (r, _) = e.reply("br0", &m);
    assert_eq!(fname(&r), "");
    match opt(&r, OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => assert!(b.starts_with(b"http://10.99.0.1:9873/ipxe/aa-bb")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn relay_agent_information_and_client_id_are_echoed() {
    let e = env();
    let mut m = msg(MessageType::Discover, R1);
    m.set_giaddr(ip("10.50.0.1"));
    m.opts_mut()
        .insert(DhcpOption::ClientIdentifier(vec![1, 0xaa, 0xbb, 0xcc, 0, 0, 3]));
    let (r, _) = e.reply("br0", &m);
    assert_eq!(
        opt(&r, OptionCode::ClientIdentifier),
        Some(&DhcpOption::ClientIdentifier(vec![1, 0xaa, 0xbb, 0xcc, 0, 0, 3]))
    );
}

#[test]
fn skip_all_lists_every_reason_in_index_order() {
    for (i, s) in Skip::ALL.iter().enumerate() {
        assert_eq!(*s as usize, i, "{s:?}");
    }
    // `Internal` is declared last: a reason added after it must be added to ALL too.
    assert_eq!(Skip::ALL.len(), Skip::Internal as usize + 1);
}

/// Runs packets through the standard chain and the server's observer, as the receive
/// loop does, at a time the test chooses.
struct Observed {
    e: Env,
    stats: Stats,
    obs: observe::Observer,
    t0: std::time::Instant,
}

impl Observed {
    fn new() -> Observed {
        let t0 = std::time::Instant::now();
        Observed {
            e: env(),
            stats: Stats::default(),
            obs: observe::Observer::new(t0),
            t0,
        }
    }

    fn feed(&mut self, iface: &str, bytes: &[u8], at_ms: u64) -> Verdict {
        let v = self.e.raw(iface, bytes);
        let now = self.t0 + std::time::Duration::from_millis(at_ms);
        self.obs.observe(&self.stats, iface, bytes, &v, now);
        v
    }
}

#[test]
fn drops_are_counted_per_reason_through_the_chain_and_summarised() {
    let mut o = Observed::new();
    for mac in [STRANGER, [2, 0, 0, 0, 0, 0x98], [2, 0, 0, 0, 0, 0x97]] {
        let b = msg(MessageType::Discover, mac).to_vec().unwrap();
        o.feed("br0", &b, 0);
    }
    let mut relayed = msg(MessageType::Discover, R1);
    relayed.set_giaddr(ip("10.60.0.1"));
    let relayed = relayed.to_vec().unwrap();
    o.feed("br0", &relayed, 0);
    o.feed("br0", &relayed, 0);
    o.feed("br0", &[0u8; 300], 0);
    o.feed("br0", &msg(MessageType::Release, N1).to_vec().unwrap(), 0);
    let answered = o.feed("br0", &msg(MessageType::Discover, N1).to_vec().unwrap(), 0);
    assert!(matches!(answered, Verdict::Reply(_)));

    let s = &o.stats;
    assert_eq!(s.dropped(Skip::UnknownClient), 3);
    assert_eq!(s.dropped(Skip::RelayNotAccepted), 2);
    assert_eq!(s.dropped(Skip::Malformed), 1);
    assert_eq!(s.dropped(Skip::Released), 1);
    assert_eq!(s.dropped(Skip::PoolPending), 0);
    assert_eq!(s.skipped.load(std::sync::atomic::Ordering::Relaxed), 7);
    assert_eq!(
        s.drops(),
        vec![
            (Skip::Malformed, 1),
            (Skip::RelayNotAccepted, 2),
            (Skip::UnknownClient, 3),
            (Skip::Released, 1),
        ]
    );
    assert_eq!(
        o.obs.summary(o.t0 + std::time::Duration::from_secs(60)).as_deref(),
        Some(
            "DHCP: 7 requests dropped in the last 60 s: 3 unknown MAC (no pool), 2 no subnet for relay 10.60.0.1, \
             1 RELEASE (never answered), 1 malformed packet"
        )
    );
    // The answered request is not a drop, and the next minute without drops is silent.
    assert_eq!(o.obs.summary(o.t0 + std::time::Duration::from_secs(120)), None);
}

/// A writer into a shared buffer, for reading what the observer logged.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self, containing: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(containing))
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn debug_lines_name_the_request_and_a_flood_is_rate_limited() {
    let out = Captured::default();
    let writer = out.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(sub, || {
        let mut o = Observed::new();
        let flood = msg(MessageType::Discover, STRANGER).to_vec().unwrap();
        // 50 retries within 5 s, then one after the 10 s period.
        for i in 0..50 {
            o.feed("br0", &flood, i * 100);
        }
        o.feed("br0", &flood, 10_000);
        let mut relayed = msg(MessageType::Discover, R1);
        relayed.set_giaddr(ip("10.60.0.1"));
        o.feed("br0", &relayed.to_vec().unwrap(), 10_000);
        o.feed("br0", &msg(MessageType::Discover, N1).to_vec().unwrap(), 10_000);
        assert_eq!(o.stats.dropped(Skip::UnknownClient), 51, "every drop is counted");
    });
    let dropped = out.lines("DHCP request dropped");
    let unknown: Vec<_> = dropped.iter().filter(|l| l.contains("unknown MAC (no pool)")).collect();
    assert_eq!(unknown.len(), 2, "{dropped:#?}");
    let first = unknown[0];
    assert!(
        first.contains("mac=02:00:00:00:00:99") && first.contains("iface=br0") && first.contains("kind=DISCOVER"),
        "{first}"
    );
    assert!(first.contains("giaddr=-") && !first.contains("suppressed"), "{first}");
    assert!(unknown[1].contains("(49 more like this suppressed)"), "{}", unknown[1]);
    let relay: Vec<_> = dropped.iter().filter(|l| l.contains("no subnet for relay")).collect();
    assert_eq!(relay.len(), 1, "{dropped:#?}");
    assert!(relay[0].contains("giaddr=10.60.0.1"), "{}", relay[0]);
    let answered = out.lines("DHCP request answered");
    assert_eq!(answered.len(), 1, "{answered:#?}");
    assert!(
        answered[0].contains("mac=aa:bb:cc:00:00:01")
            && answered[0].contains("reply=OFFER")
            && answered[0].contains("addr=10.99.0.11"),
        "{}",
        answered[0]
    );
}

// ---- Racks of the replicated state (`wwctl rack`) ----

const RACK_NODES: &str = r#"
nodes:
  a1:
    network devices:
      default: {hwaddr: "aa:bb:cc:00:01:01", ipaddr: 10.1.0.11}
  b1:
    network devices:
      default: {hwaddr: "aa:bb:cc:00:02:01", ipaddr: 10.7.0.11}
"#;
const A1: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 1, 1];
const B1: [u8; 6] = [0xaa, 0xbb, 0xcc, 0, 2, 1];

fn rack(net: &str, relayed: bool, heads: &[(u64, &str)]) -> crate::state::Rack {
    crate::state::Rack {
        network: net.parse().unwrap(),
        relayed,
        router: None,
        dns: vec![],
        domain: None,
        lease_secs: None,
        pool: None,
        heads: heads
            .iter()
            .map(|(id, a)| crate::state::RackHead { id: *id, addr: ip(a) })
            .collect(),
    }
}

/// Racks: `direct` (10.1.0.0/24, heads 1 then 2), `far` (relayed 10.7.0.0/24, heads 2 then
/// 1), `lost` (head 1 at an address no interface has), `other` (head 3 only). Interfaces:
/// br0 holds 10.1.0.1 (head 1) / 10.1.0.2 (head 2), eth0 the uplink.
fn rack_state() -> State {
    let mut st = State::default();
    let conf = crate::model::parse_nodes_conf(RACK_NODES).unwrap();
    st.apply(
        1,
        &Request {
            audit: None,
            id: None,
            cmd: Command::Import { conf },
        },
    )
    .0
    .unwrap();
    let racks = [
        (
            "direct",
            rack("10.1.0.0/24", false, &[(1, "10.1.0.1"), (2, "10.1.0.2")]),
        ),
        ("far", rack("10.7.0.0/24", true, &[(2, "10.0.0.2"), (1, "10.0.0.1")])),
        ("lost", rack("10.3.0.0/24", false, &[(1, "10.3.0.1")])),
        ("other", rack("10.4.0.0/24", false, &[(3, "10.4.0.1")])),
    ];
    for (i, (name, r)) in racks.into_iter().enumerate() {
        let cmd = Command::Rack(crate::state::RackCommand::Put {
            name: name.into(),
            rack: r,
            expect: None,
        });
        st.apply(
            2 + i as u64,
            &Request {
                id: None,
                cmd,
                audit: None,
            },
        )
        .0
        .unwrap();
    }
    st
}

fn addrs(head: u64) -> IfAddrs {
    let mut a = IfAddrs::new();
    a.insert("br0".into(), vec![ip(&format!("10.1.0.{head}"))]);
    a.insert("eth0".into(), vec![ip(&format!("10.0.0.{head}"))]);
    a.insert("lo".into(), vec![ip("127.0.0.1")]);
    a
}

fn rack_cfg() -> DhcpConfig {
    DhcpConfig::from_yaml("interfaces:\n  - {name: br0}\n  - {name: eth0}\n").unwrap()
}

#[test]
fn racks_become_subnets_on_the_interface_holding_the_heads_address() {
    let st = rack_state();
    let view = BootView::from_state(&st, 9);
    let plan = rack_cfg().with_racks(1, &view.racks, &addrs(1));
    assert_eq!(plan.served, ["direct".to_string(), "far".to_string()].into());
    let direct = plan.config.subnets.iter().find(|s| s.name == "direct").unwrap();
    assert_eq!(direct.server, ip("10.1.0.1"));
    assert_eq!(direct.http_base, "http://10.1.0.1:9873");
    assert_eq!(direct.rack.as_ref().unwrap().me, 0);
    let br0 = plan.config.interface("br0").unwrap();
    assert_eq!(br0.subnets.len(), 1, "only the direct rack is on br0");
    assert!(
        plan.config.interface("eth0").unwrap().subnets.is_empty(),
        "relayed racks are matched by giaddr"
    );
    let far = plan.config.relayed_subnet(ip("10.7.0.1")).unwrap();
    assert_eq!((far.server, far.rack.as_ref().unwrap().me), (ip("10.0.0.1"), 1));
    assert_eq!(plan.problems.len(), 1, "{:?}", plan.problems);
    assert!(plan.problems[0].contains("rack lost") && plan.problems[0].contains("10.3.0.1"));

    // The address on an interface that is not configured: said so, never served there.
    let mut a = addrs(1);
    a.insert("br7".into(), vec![ip("10.3.0.1")]);
    let plan = rack_cfg().with_racks(1, &view.racks, &a);
    assert!(
        plan.problems
            .iter()
            .any(|p| p.contains("br7") && p.contains("boot.dhcp.interfaces")),
        "{:?}",
        plan.problems
    );
    assert!(!plan.served.contains("lost"));
}

/// Fixed answers for the rack rule.
struct Health {
    down: Vec<u64>,
    quorum: bool,
    ready: bool,
}

impl RackHealth for Health {
    fn serving(&self, id: u64, _rack: &str) -> bool {
        !self.down.contains(&id)
    }
    fn in_quorum(&self) -> bool {
        self.quorum
    }
    fn ready(&self, _rack: &str) -> bool {
        self.ready
    }
}

fn rack_verdict(head: u64, h: &dyn RackHealth, m: &Message, iface: &str) -> Verdict {
    let st = rack_state();
    let view = BootView::from_state(&st, 9);
    let plan = rack_cfg().with_racks(head, &view.racks, &addrs(head));
    let bytes = m.to_vec().unwrap();
    let i = plan.config.interface(iface).unwrap();
    handle_packet(
        &bytes,
        i,
        &plan.config,
        &view,
        &MemoryAllocator::new(),
        h,
        &Chain::standard(),
    )
}

fn offered(v: &Verdict) -> Option<Ipv4Addr> {
    match v {
        Verdict::Reply(r) => Some(r.msg.yiaddr()),
        Verdict::Skip(_) => None,
    }
}

#[test]
fn only_the_first_healthy_head_of_a_rack_answers() {
    let up = Health {
        down: vec![],
        quorum: true,
        ready: true,
    };
    let d = msg(MessageType::Discover, A1);
    assert_eq!(
        offered(&rack_verdict(1, &up, &d, "br0")),
        Some(ip("10.1.0.11")),
        "primary answers"
    );
    assert_eq!(
        rack_verdict(2, &up, &d, "br0"),
        Verdict::Skip(Skip::NotOurTurn),
        "backup stands by"
    );

    // Primary down: the backup in contact with the quorum takes over, with its own address.
    let primary_down = Health {
        down: vec![1],
        quorum: true,
        ready: true,
    };
    match rack_verdict(2, &primary_down, &pxe(msg(MessageType::Discover, A1), 0), "br0") {
        Verdict::Reply(r) => {
            assert_eq!(r.msg.yiaddr(), ip("10.1.0.11"));
            assert_eq!(r.msg.siaddr(), ip("10.1.0.2"), "next-server is the backup on the rack");
        }
        v => panic!("backup should answer: {v:?}"),
    }
    // ... but not from a minority partition.
    let cut_off = Health {
        down: vec![1],
        quorum: false,
        ready: true,
    };
    assert_eq!(rack_verdict(2, &cut_off, &d, "br0"), Verdict::Skip(Skip::NoQuorum));
    // The primary answers its rack's known nodes even without a quorum.
    let alone = Health {
        down: vec![2],
        quorum: false,
        ready: true,
    };
    assert_eq!(offered(&rack_verdict(1, &alone, &d, "br0")), Some(ip("10.1.0.11")));

    // A client that has waited (secs ≥ WAITED_SECS) is answered by the backup too.
    let mut waited = msg(MessageType::Discover, A1);
    waited.set_secs(handlers::WAITED_SECS);
    assert_eq!(offered(&rack_verdict(2, &up, &waited, "br0")), Some(ip("10.1.0.11")));
    let mut early = msg(MessageType::Discover, A1);
    early.set_secs(handlers::WAITED_SECS - 1);
    assert_eq!(rack_verdict(2, &up, &early, "br0"), Verdict::Skip(Skip::NotOurTurn));

    // A head that lacks the rack's artifacts does not answer, primary or not.
    let fetching = Health {
        down: vec![2],
        quorum: true,
        ready: false,
    };
    assert_eq!(rack_verdict(1, &fetching, &d, "br0"), Verdict::Skip(Skip::NotReady));
}

/// Every head up, in quorum; remembers transactions as the daemon's `Liveness` does.
#[derive(Default)]
struct Remembering(std::sync::Mutex<std::collections::HashSet<(MacAddr, u32)>>);

impl RackHealth for Remembering {
    fn serving(&self, _id: u64, _rack: &str) -> bool {
        true
    }
    fn in_quorum(&self) -> bool {
        true
    }
    fn retransmission(&self, mac: &MacAddr, xid: u32) -> bool {
        !self.0.lock().unwrap().insert((*mac, xid))
    }
}

#[test]
fn a_first_discover_that_already_says_it_waited_is_left_to_the_primary() {
    // iPXE counts `secs` from before link-up: its first DISCOVER may carry secs >= 4
    // (seen with QEMU, tests/it/rack_qemu.rs). The backup leaves it to the primary.
    let backup = Remembering::default();
    let mut d = msg(MessageType::Discover, A1);
    d.set_secs(handlers::WAITED_SECS + 2);
    assert_eq!(
        rack_verdict(2, &backup, &d, "br0"),
        Verdict::Skip(Skip::NotOurTurn),
        "first sighting of the transaction"
    );
    // Its retransmission (same xid) shows the primary did not answer: the backup does.
    assert_eq!(offered(&rack_verdict(2, &backup, &d, "br0")), Some(ip("10.1.0.11")));
    // A retransmission that has not waited yet is still the primary's.
    let mut early = msg(MessageType::Discover, A1);
    early.set_xid(d.xid().wrapping_add(7));
    assert_eq!(rack_verdict(2, &backup, &early, "br0"), Verdict::Skip(Skip::NotOurTurn));
    assert_eq!(rack_verdict(2, &backup, &early, "br0"), Verdict::Skip(Skip::NotOurTurn));
    // A new transaction starts over.
    let mut next = d.clone();
    next.set_xid(d.xid().wrapping_add(1));
    assert_eq!(rack_verdict(2, &backup, &next, "br0"), Verdict::Skip(Skip::NotOurTurn));
    // The primary answers at first sighting.
    let primary = Remembering::default();
    assert_eq!(offered(&rack_verdict(1, &primary, &d, "br0")), Some(ip("10.1.0.11")));
}

#[test]
fn a_relayed_rack_is_answered_to_the_relay_by_its_first_head() {
    let up = Health {
        down: vec![],
        quorum: true,
        ready: true,
    };
    let mut d = pxe(msg(MessageType::Discover, B1), 0);
    d.set_giaddr(ip("10.7.0.1")).set_hops(1);
    // Head 2 is first for `far`; it receives the relayed request on its uplink.
    match rack_verdict(2, &up, &d, "eth0") {
        Verdict::Reply(r) => {
            assert_eq!(r.dest, Destination::Relay(ip("10.7.0.1")));
            assert_eq!(r.msg.yiaddr(), ip("10.7.0.11"));
            assert_eq!(r.msg.siaddr(), ip("10.0.0.2"));
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(rack_verdict(1, &up, &d, "eth0"), Verdict::Skip(Skip::NotOurTurn));
    // A broadcast from the uplink's own link is not a rack's request.
    let direct = msg(MessageType::Discover, B1);
    assert_eq!(
        rack_verdict(2, &up, &direct, "eth0"),
        Verdict::Skip(Skip::InterfaceNotServed)
    );
}

/// Fuzzing (issue 12, part 6): packets a hostile or broken client could send — valid
/// requests with bytes flipped, cut short, extended, or random bytes behind a valid
/// header — never make a handler panic (`handle_packet` would turn a panic into
/// `Skip::Internal`) and every reply encodes and decodes again. Bounded: a fixed number
/// of cases per run; failures found are kept in proptest-regressions/ and replayed first.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn seeds() -> Vec<Vec<u8>> {
        let mut relayed = pxe(msg(MessageType::Discover, R1), 7);
        relayed.set_giaddr(ip("10.50.0.1"));
        relayed.set_hops(1);
        let mut req = msg(MessageType::Request, N1);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip("10.99.0.11")));
        req.opts_mut().insert(DhcpOption::ServerIdentifier(ip("10.99.0.1")));
        let mut ipxe = pxe(msg(MessageType::Discover, N2), 7);
        ipxe.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        [
            pxe(msg(MessageType::Discover, N1), 0),
            pxe(msg(MessageType::Discover, STRANGER), 7),
            relayed,
            req,
            ipxe,
            msg(MessageType::Release, N1),
            msg(MessageType::Inform, FAR),
            msg(MessageType::Decline, STRANGER),
        ]
        .iter()
        .map(|m| m.to_vec().unwrap())
        .collect()
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Extend(Vec<u8>),
        Splice(usize, Vec<u8>),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            1 => any::<usize>().prop_map(Mutation::Truncate),
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Extend),
            2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Mutation::Splice(i, b)),
        ]
    }

    fn apply(mut p: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
        for m in muts {
            match m {
                Mutation::Flip(i, b) if !p.is_empty() => {
                    let i = i % p.len();
                    p[i] ^= b | 1;
                }
                Mutation::Truncate(n) if !p.is_empty() => p.truncate(n % p.len()),
                Mutation::Extend(b) => p.extend_from_slice(b),
                // Overwrite inside the options (past the cookie), where TLV lengths live.
                Mutation::Splice(i, b) if p.len() > 240 => {
                    let at = 240 + i % (p.len() - 240);
                    for (k, x) in b.iter().enumerate() {
                        if let Some(slot) = p.get_mut(at + k) {
                            *slot = *x;
                        }
                    }
                }
                _ => {}
            }
        }
        p
    }

    fn check(env: &Env, bytes: &[u8]) -> Result<(), TestCaseError> {
        for iface in ["br0", "br1"] {
            match env.raw(iface, bytes) {
                Verdict::Skip(Skip::Internal) => {
                    return Err(TestCaseError::fail(format!(
                        "a handler failed on {iface} (panic or internal error) for {bytes:02x?}"
                    )))
                }
                Verdict::Skip(_) => {}
                Verdict::Reply(r) => {
                    let wire = r
                        .msg
                        .to_vec()
                        .map_err(|e| TestCaseError::fail(format!("reply does not encode: {e}")))?;
                    Message::from_bytes(&wire)
                        .map_err(|e| TestCaseError::fail(format!("reply does not decode: {e}")))?;
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn mutated_requests_never_break_a_handler(
            seed in 0usize..8,
            muts in proptest::collection::vec(mutation(), 1..6),
        ) {
            let env = env();
            let p = apply(seeds()[seed].clone(), &muts);
            check(&env, &p)?;
        }

        #[test]
        fn random_options_behind_a_valid_header_never_break_a_handler(
            seed in 0usize..8,
            opts in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let env = env();
            let mut p = seeds()[seed][..240].to_vec();
            p.extend_from_slice(&opts);
            check(&env, &p)?;
        }
    }
}
