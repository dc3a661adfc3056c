//! One head, two rack interfaces, one of them missing at start: DHCP serves the
//! present one at once, picks the other up when it appears, and again after it is
//! deleted and re-created (a device-bound socket would otherwise stay deaf). Real
//! `dhclient`s in namespaces the test creates and deletes.

use std::time::Duration;

use wulfpack::boot::dhcp::DhcpConfig;

use crate::dhcp_lab::{nodes, view_of, LabServer};
use crate::netns::{skip_reason, NetNs};

#[test]
fn a_missing_or_recreated_interface_never_stops_dhcp_on_the_others() {
    if let Some(why) = skip_reason(&[("ip", "iproute2"), ("dhclient", "isc-dhcp-client")]) {
        eprintln!("SKIP a_missing_or_recreated_interface_never_stops_dhcp_on_the_others: {why}");
        return;
    }
    let head = NetNs::new("ifh");
    let rack1 = NetNs::new("if1");
    let rack2 = NetNs::new("if2");
    head.veth("s0", Some("10.77.0.1/24"), &rack1, "c0", None);
    let mut node = nodes(1, "10.77.0.49".parse().unwrap());
    node[0].mac = rack1.mac("c0");
    // Rack 2 has no known nodes, a dynamic pool: whatever MAC its veth gets, it is served.
    let cfg = DhcpConfig::from_yaml(
        "interfaces: [{name: s0, subnets: [rack1]}, {name: s1, subnets: [rack2]}]\n\
         subnets:\n  rack1: {network: 10.77.0.0/24, server: 10.77.0.1}\n  \
         rack2: {network: 10.79.0.0/24, server: 10.79.0.1, pool: {start: 10.79.0.100, end: 10.79.0.109}}",
    )
    .unwrap();
    let server = LabServer::start_supervised(&head, cfg, view_of(&node, &[]));

    // s1 does not exist: rack 1 is served all the same.
    let lease = crate::dhclient::run(&rack1, "c0", "10.77.0.50/24", Duration::from_secs(40));
    assert!(lease.bound, "rack 1 not served while s1 is missing:\n{}", lease.log);

    // s1 appears: picked up without a restart.
    head.veth("s1", Some("10.79.0.1/24"), &rack2, "c1", None);
    let lease = crate::dhclient::run(&rack2, "c1", "10.79.0.10", Duration::from_secs(40));
    assert!(lease.bound, "s1 was not picked up after it appeared:\n{}", lease.log);
    lease.expect("new_dhcp_server_identifier=10.79.0.1");

    // s1 is deleted and re-created (new index, new peer): served again.
    head.ok("ip link del s1");
    head.veth("s1", Some("10.79.0.1/24"), &rack2, "c1", None);
    let lease = crate::dhclient::run(&rack2, "c1", "10.79.0.10", Duration::from_secs(40));
    assert!(
        lease.bound,
        "s1 was not served again after it was re-created:\n{}",
        lease.log
    );
    server.stop();
}
