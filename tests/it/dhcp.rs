//! The DHCP server against real clients in network namespaces the tests create and
//! delete (shared/LAB.md): ISC `dhclient` gets the node's configured address, and
//! `perfdhcp` runs cleanly against known MACs. Both skip with a printed reason when not
//! root or when the Debian packages cannot be installed.
//!
//! Dynamic pools across heads run in-process: two heads of a real Raft cluster, each
//! with its own [`RaftLeases`], answer fabricated DORA exchanges through the real
//! handler chain at the same time.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Encodable};
use wulfpack::boot::dhcp::raft_leases::RaftLeases;
use wulfpack::boot::dhcp::{handle_packet, AllServing, Chain, DhcpConfig, LeaseAllocator, Skip, Verdict};
use wulfpack::boot::view::ViewRx;

use crate::harness::{eventually, settings, Cluster};

use crate::dhcp_lab::{nodes, perfdhcp, view_of, write_macs, LabServer};
use crate::netns::{skip_reason, NetNs};

#[test]
fn dhclient_gets_the_configured_address() {
    if let Some(why) = skip_reason(&[("ip", "iproute2"), ("dhclient", "isc-dhcp-client")]) {
        eprintln!("SKIP dhclient_gets_the_configured_address: {why}");
        return;
    }
    let srv = NetNs::new("dhs");
    let cli = NetNs::new("dhc");
    srv.veth("s0", Some("10.77.0.1/24"), &cli, "c0", None);
    let mac = cli.mac("c0");
    let mut node = nodes(1, "10.77.0.49".parse().unwrap());
    node[0].mac = mac.clone();
    let view = view_of(&node, &[("dns", "10.77.0.53")]);
    let cfg = DhcpConfig::from_yaml(
        "interfaces: [{name: s0, subnets: [lab]}]\n\
         subnets: {lab: {network: 10.77.0.0/24, server: 10.77.0.1, router: 10.77.0.254, domain: lab.test, lease_time: 10m}}",
    )
    .unwrap();
    let server = LabServer::start(&srv, "s0", cfg, view);

    let lease = crate::dhclient::run(&cli, "c0", "10.77.0.50/24", Duration::from_secs(40));
    assert!(lease.bound, "dhclient did not get 10.77.0.50:\n{}", lease.log);
    for want in [
        "new_ip_address=10.77.0.50",
        "new_subnet_mask=255.255.255.0",
        "new_routers=10.77.0.254",
        "new_domain_name_servers=10.77.0.53",
        "new_host_name=n00000",
        "new_domain_name=lab.test",
        "new_dhcp_lease_time=600",
        "new_dhcp_server_identifier=10.77.0.1",
    ] {
        lease.expect(want);
    }
    let replied = server.stats.replied.load(std::sync::atomic::Ordering::Relaxed);
    assert!(replied >= 2, "an OFFER and an ACK, got {replied} replies");
    server.stop();
}

#[test]
fn perfdhcp_runs_cleanly_with_known_macs() {
    if let Some(why) = skip_reason(&[("ip", "iproute2"), ("perfdhcp", "kea-admin")]) {
        eprintln!("SKIP perfdhcp_runs_cleanly_with_known_macs: {why}");
        return;
    }
    let srv = NetNs::new("pfs");
    let cli = NetNs::new("pfc");
    srv.veth("s0", Some("10.78.0.1/16"), &cli, "c0", Some("10.78.0.2/16"));
    let ns = nodes(200, "10.78.1.0".parse().unwrap());
    let cfg = DhcpConfig::from_yaml(
        "interfaces: [{name: s0, subnets: [lab]}]\n\
         subnets: {lab: {network: 10.78.0.0/16, server: 10.78.0.1, router: 10.78.0.1, relayed: true}}",
    )
    .unwrap();
    let server = LabServer::start(&srv, "s0", cfg, view_of(&ns, &[]));
    let dir = tempfile::tempdir().unwrap();
    let macs = dir.path().join("macs");
    write_macs(&macs, &ns);
    let p = perfdhcp(&cli, "c0", "10.78.0.1".parse().unwrap(), 500, 3, Some(&macs), ns.len());
    server.stop();
    eprintln!(
        "perfdhcp: {} DISCOVER/{} OFFER, {} REQUEST/{} ACK, {:.0} DORA/s, drops {:.3} %",
        p.sent_discover,
        p.recv_offer,
        p.sent_request,
        p.recv_ack,
        p.rate,
        p.drop_pct()
    );
    assert!(p.sent_discover >= 1000, "perfdhcp sent too little:\n{}", p.raw);
    assert!(
        p.recv_ack > 0 && p.drop_pct() < 0.1,
        "drops {:.3} %:\n{}",
        p.drop_pct(),
        p.raw
    );
}

const POOL_CFG: &str = "interfaces: [{name: s0, subnets: [lab]}]\n\
    subnets: {lab: {network: 10.79.0.0/16, server: 10.79.0.1, relayed: true, lease_time: 1h, \
    pool: {start: 10.79.1.0, end: 10.79.8.255}}}";

fn pool_mac(i: usize) -> [u8; 6] {
    [2, 0x79, 0, 0, (i >> 8) as u8, i as u8]
}

/// One message as a relay at 10.79.0.2 sends it.
fn pool_msg(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new(u, u, u, "10.79.0.2".parse().unwrap(), &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(ip) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier("10.79.0.1".parse().unwrap()));
    }
    m.to_vec().unwrap()
}

/// Send one request through the real handler chain; the reply's type and address.
fn exchange(
    cfg: &DhcpConfig,
    view: &ViewRx,
    leases: &dyn LeaseAllocator,
    bytes: &[u8],
) -> Result<(MessageType, Ipv4Addr), Skip> {
    let v = view.borrow().clone();
    match handle_packet(
        bytes,
        cfg.interface("s0").unwrap(),
        cfg,
        &v,
        leases,
        &AllServing,
        &Chain::standard(),
    ) {
        Verdict::Reply(r) => {
            let m = Message::from_bytes(&r.msg.to_vec().unwrap()).unwrap();
            Ok((m.opts().msg_type().unwrap(), m.yiaddr()))
        }
        Verdict::Skip(s) => Err(s),
    }
}

/// A full DISCOVER → OFFER → REQUEST → ACK; like a client, retransmits (bounded) while
/// the head has no block yet.
fn dora(cfg: &DhcpConfig, view: &ViewRx, leases: &dyn LeaseAllocator, mac: [u8; 6]) -> Ipv4Addr {
    for _ in 0..200 {
        match exchange(cfg, view, leases, &pool_msg(MessageType::Discover, mac, None)) {
            Ok((MessageType::Offer, ip)) => {
                let ack = exchange(cfg, view, leases, &pool_msg(MessageType::Request, mac, Some(ip)));
                assert_eq!(ack, Ok((MessageType::Ack, ip)), "REQUEST of the offered {ip}");
                return ip;
            }
            Err(Skip::PoolPending) => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("DISCOVER: {other:?}"),
        }
    }
    panic!("no OFFER after 200 retransmissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_heads_serve_one_pool_without_handing_out_an_address_twice() {
    let c = Cluster::start(2, settings()).await;
    let cfg = DhcpConfig::from_yaml(POOL_CFG).unwrap();
    let rt = tokio::runtime::Handle::current();
    let heads: Vec<std::sync::Arc<RaftLeases>> = (0..2)
        .map(|i| std::sync::Arc::new(RaftLeases::start(c.ctx(i).cluster.clone(), &cfg, rt.clone())))
        .collect();
    let per_head = 300;
    // Both heads at once, each to its own clients, through the real chain.
    let tasks: Vec<_> = (0..2)
        .map(|h| {
            let (cfg, view, leases) = (cfg.clone(), c.ctx(h).view.clone(), heads[h].clone());
            tokio::task::spawn_blocking(move || {
                (0..per_head)
                    .map(|i| {
                        let mac = pool_mac(h * per_head + i);
                        (mac, dora(&cfg, &view, leases.as_ref(), mac))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut given: HashMap<[u8; 6], (usize, Ipv4Addr)> = HashMap::new();
    for (h, t) in tasks.into_iter().enumerate() {
        for (mac, ip) in t.await.unwrap() {
            given.insert(mac, (h, ip));
        }
    }
    let ips: HashSet<Ipv4Addr> = given.values().map(|(_, ip)| *ip).collect();
    assert_eq!(ips.len(), 2 * per_head, "an address was handed out twice");
    let pool = cfg.subnets[0].pool.unwrap();
    assert!(ips.iter().all(|ip| pool.contains(*ip)));

    // Every binding gets recorded, and both heads' views show all of them.
    eventually(20, "all bindings recorded in both views", || {
        let done = heads.iter().all(|l| l.unrecorded() == 0)
            && (0..2).all(|h| c.ctx(h).view.borrow().leases.len() == 2 * per_head);
        async move { done }
    })
    .await;
    for (mac, (_, ip)) in &given {
        let m = wulfpack::boot::dhcp::MacAddr(*mac).to_string();
        assert_eq!(c.ctx(0).view.borrow().leases[&m].0, *ip, "{m}");
    }

    // A client of head 1 asks head 2 (its head died, or it renews through the other):
    // the same address, at the first DISCOVER.
    let view2 = c.ctx(1).view.clone();
    for i in [0, 7, per_head - 1] {
        let mac = pool_mac(i);
        let (h, ip) = given[&mac];
        assert_eq!(h, 0);
        let got = tokio::task::block_in_place(|| dora(&cfg, &view2, heads[1].as_ref(), mac));
        assert_eq!(got, ip, "same address from the other head");
    }

    // RELEASE through head 2 of a lease head 1 gave: unbound cluster-wide.
    let (mac, ip) = (pool_mac(3), given[&pool_mac(3)].1);
    let mut rel = Message::from_bytes(&pool_msg(MessageType::Release, mac, None)).unwrap();
    rel.set_ciaddr(ip);
    let r = exchange(&cfg, &view2, heads[1].as_ref(), &rel.to_vec().unwrap());
    assert_eq!(r, Err(Skip::Released));
    let m = wulfpack::boot::dhcp::MacAddr(mac).to_string();
    eventually(20, "the release is recorded", || {
        let gone = c.ctx(0).sm.read(|s| s.pool.lease_of(&m).is_none());
        async move { gone }
    })
    .await;
    drop(heads);
    c.shutdown().await;
}

/// An idle head writes (almost) nothing: with DHCP on and no pool (static nodes only)
/// no Raft entry at all, and with a pool one keep-alive per period — idled here for
/// many keep-alive periods (200 ms instead of 150 s) and counted. (A holder that never
/// reserved a block used to retry a refused keep-alive every 5 ms: ~140 entries/s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_head_writes_no_raft_entries_but_its_keepalives() {
    let c = Cluster::start(1, settings()).await;
    c.wait_ready().await;
    let rt = tokio::runtime::Handle::current();
    let keepalive = Duration::from_millis(200);
    let idle = Duration::from_secs(3);
    let applied = || c.ctx(0).sm.last_applied().map_or(0, |l| l.index);

    let static_only = DhcpConfig::from_yaml(
        "interfaces: [{name: s0, subnets: [lab]}]\n\
         subnets: {lab: {network: 10.80.0.0/16, server: 10.80.0.1, lease_time: 1h}}",
    )
    .unwrap();
    let leases = RaftLeases::start_with_keepalive(c.ctx(0).cluster.clone(), &static_only, rt.clone(), keepalive);
    // Let start-up writes (registration) settle first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = applied();
    tokio::time::sleep(idle).await;
    assert_eq!(applied() - before, 0, "a head without pools writes nothing while idle");
    drop(leases);

    let pooled = DhcpConfig::from_yaml(POOL_CFG).unwrap();
    let leases = RaftLeases::start_with_keepalive(c.ctx(0).cluster.clone(), &pooled, rt, keepalive);
    eventually(10, "first block reserved", || async {
        leases.free(wulfpack::boot::dhcp::Pool {
            start: "10.79.1.0".parse().unwrap(),
            end: "10.79.8.255".parse().unwrap(),
        }) > 0
    })
    .await;
    let before = applied();
    tokio::time::sleep(idle).await;
    let written = applied() - before;
    let periods = (idle.as_millis() / keepalive.as_millis()) as u64;
    assert!(
        written <= periods + 1,
        "{written} entries in {} keep-alive periods of an idle head with a pool",
        periods
    );
    assert!(written >= 1, "the holder of a block keeps it alive");
}

/// Issue 12, part 6: one client flooding the rack (perfdhcp, 2,000 DORA/s from one
/// MAC) beside a normal client (dhclient). The flood is cut to the per-MAC rate
/// (`boot.dhcp.rate_limit`, default 10 per second, bursts of 30) and counted as
/// `RateLimited`; the normal client still gets its address.
#[test]
fn a_flood_from_one_mac_does_not_starve_the_rack() {
    if let Some(why) = skip_reason(&[
        ("ip", "iproute2"),
        ("dhclient", "isc-dhcp-client"),
        ("perfdhcp", "kea-admin"),
    ]) {
        eprintln!("SKIP a_flood_from_one_mac_does_not_starve_the_rack: {why}");
        return;
    }
    let srv = NetNs::new("fls");
    let good = NetNs::new("flg");
    let bad = NetNs::new("flb");
    srv.ok("ip link add br0 type bridge && ip link set br0 up && ip addr add 10.76.0.1/24 dev br0");
    good.veth("c0", None, &srv, "p1", None);
    bad.veth("c0", Some("10.76.0.9/24"), &srv, "p2", None);
    srv.ok("ip link set p1 master br0 && ip link set p2 master br0");
    // Two known nodes: the normal client, and the flooder (a known MAC, so every one of
    // its requests would be answered without the limit).
    let mut ns = nodes(2, "10.76.0.49".parse().unwrap());
    ns[0].mac = good.mac("c0");
    ns[1].mac = "02:f1:00:00:00:01".into();
    ns[1].ip = "10.76.0.9".parse().unwrap();
    let cfg = DhcpConfig::from_yaml(
        "interfaces: [{name: br0, subnets: [lab]}]\n\
         subnets: {lab: {network: 10.76.0.0/24, server: 10.76.0.1, router: 10.76.0.1, relayed: true}}",
    )
    .unwrap();
    let server = LabServer::start(&srv, "br0", cfg, view_of(&ns, &[]));
    let dir = tempfile::tempdir().unwrap();
    let macs = dir.path().join("macs");
    write_macs(&macs, &ns[1..]);
    let secs = 8;
    let flood = {
        let macs = macs.clone();
        let bad_ns = bad.name.clone();
        std::thread::spawn(move || {
            // perfdhcp in the flooder's namespace (NetNs is not Send; its name is).
            let o = std::process::Command::new("ip")
                .args(["netns", "exec", &bad_ns, "sh", "-c"])
                .arg(format!(
                    "timeout 30 perfdhcp -4 -l c0 -r 2000 -R 1 -p {secs} -M {} 10.76.0.1 2>&1",
                    macs.display()
                ))
                .output()
                .unwrap();
            crate::dhcp_lab::parse_perfdhcp(&String::from_utf8_lossy(&o.stdout))
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let lease = crate::dhclient::run(&good, "c0", "10.76.0.50/24", Duration::from_secs(40));
    let p = flood.join().unwrap();
    let limited = server.stats.dropped(Skip::RateLimited);
    server.stop();
    assert!(
        lease.bound,
        "the normal client got no address during the flood:\n{}",
        lease.log
    );
    assert!(
        p.sent_discover > 5_000,
        "perfdhcp did not flood (sent {} DISCOVERs):\n{}",
        p.sent_discover,
        p.raw
    );
    // The flooder is answered at most at the limit: a burst of 30, then 10 per second
    // (DISCOVERs and REQUESTs share its budget).
    let answered = p.recv_offer + p.recv_ack;
    assert!(
        answered <= 30 + 10 * (secs as u64 + 2),
        "the flooding MAC got {answered} answers in {secs} s"
    );
    assert!(limited > 5_000, "only {limited} requests counted as rate-limited");
}
