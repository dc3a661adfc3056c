//! A routed rack (shared/LAB.md): the client's broadcast never reaches the head; ISC
//! `dhcrelay` in a router namespace forwards it with `giaddr` set, our server answers
//! the relay on port 67, and `dhclient` ends up with the node's configured address and
//! the rack's router. Three namespaces, created and deleted by the test.

use std::time::Duration;

use wulfpack::boot::dhcp::DhcpConfig;

use crate::dhcp_lab::{nodes, view_of, LabServer};
use crate::netns::{skip_reason, NetNs};

#[test]
fn dhclient_behind_dhcrelay_gets_its_address_from_the_relayed_subnet() {
    let tools = [
        ("ip", "iproute2"),
        ("dhclient", "isc-dhcp-client"),
        ("dhcrelay", "isc-dhcp-relay"),
    ];
    if let Some(why) = skip_reason(&tools) {
        eprintln!("SKIP dhclient_behind_dhcrelay_gets_its_address_from_the_relayed_subnet: {why}");
        return;
    }
    // head (s0 10.77.0.1) — (r0 10.77.0.254) router (r1 10.78.0.1) — (c0) client
    let head = NetNs::new("rlh");
    let router = NetNs::new("rlr");
    let cli = NetNs::new("rlc");
    head.veth("s0", Some("10.77.0.1/24"), &router, "r0", Some("10.77.0.254/24"));
    router.veth("r1", Some("10.78.0.1/24"), &cli, "c0", None);
    head.ok("ip route add 10.78.0.0/24 via 10.77.0.254");

    let mut node = nodes(1, "10.78.0.49".parse().unwrap());
    node[0].mac = cli.mac("c0");
    let view = view_of(&node, &[]);
    // The head serves its own link and, relayed, the rack behind the router; the rack's
    // subnet is on no interface of the head.
    let cfg = DhcpConfig::from_yaml(
        "interfaces: [{name: s0, subnets: [mgmt]}]\n\
         subnets:\n  mgmt: {network: 10.77.0.0/24, server: 10.77.0.1}\n  \
         rack2: {network: 10.78.0.0/24, server: 10.77.0.1, router: 10.78.0.1, relayed: true, lease_time: 5m}",
    )
    .unwrap();
    let server = LabServer::start(&head, "s0", cfg, view);
    let relay_log = tempfile::NamedTempFile::new().unwrap();
    let relay = router.spawn(
        &[
            "timeout",
            "90",
            "dhcrelay",
            "-4",
            "-d",
            "-id",
            "r1",
            "-iu",
            "r0",
            "10.77.0.1",
        ],
        Some(relay_log.path()),
    );

    let lease = crate::dhclient::run(&cli, "c0", "10.78.0.50/24", Duration::from_secs(40));
    router.kill(relay);
    let relay_out = std::fs::read_to_string(relay_log.path()).unwrap_or_default();
    assert!(
        lease.bound,
        "dhclient did not get 10.78.0.50 through the relay:\n{}\ndhcrelay:\n{relay_out}",
        lease.log
    );
    lease.expect("new_ip_address=10.78.0.50");
    lease.expect("new_routers=10.78.0.1");
    lease.expect("new_dhcp_lease_time=300");
    lease.expect("new_dhcp_server_identifier=10.77.0.1");
    let replied = server.stats.replied.load(std::sync::atomic::Ordering::Relaxed);
    assert!(replied >= 2, "an OFFER and an ACK to the relay, got {replied} replies");
    server.stop();
}
