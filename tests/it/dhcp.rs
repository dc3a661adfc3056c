//! The DHCP server against real clients in network namespaces the tests create and
//! delete (shared/LAB.md): ISC `dhclient` gets the node's configured address, and
//! `perfdhcp` runs cleanly against known MACs. Both skip with a printed reason when not
//! root or when the Debian packages cannot be installed.

use std::time::Duration;

use wulfpack::boot::dhcp::DhcpConfig;

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

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Our own dhclient-script: records what it was given and sets only the address
    // (Debian's script would rewrite the host's /etc/resolv.conf).
    std::fs::write(
        dir.path().join("script"),
        format!(
            "#!/bin/sh\nenv | grep -E '^(reason|new_|interface)' | sort > {d}/env.$reason\n\
             case \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;; esac\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dhclient.conf"),
        "timeout 30;\nrequest subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name;\n",
    )
    .unwrap();
    let script = format!("{d}/script");
    let conf = format!("{d}/dhclient.conf");
    let leases = format!("{d}/leases");
    let pidf = format!("{d}/pid");
    let _ = std::process::Command::new("chmod").args(["+x", &script]).status();
    let pid = cli.spawn(
        &[
            "timeout", "60", "dhclient", "-4", "-d", "-1", "-v", "-cf", &conf, "-sf", &script, "-lf", &leases, "-pf",
            &pidf, "c0",
        ],
        Some(&dir.path().join("dhclient.log")),
    );
    let got = cli.wait_for(
        "ip -4 addr show dev c0 | grep -q 'inet 10.77.0.50/24'",
        Duration::from_secs(40),
    );
    cli.kill(pid);
    let log = std::fs::read_to_string(dir.path().join("dhclient.log")).unwrap_or_default();
    assert!(got, "dhclient did not get 10.77.0.50:\n{log}");
    let env = std::fs::read_to_string(dir.path().join("env.BOUND")).unwrap();
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
        assert!(env.contains(want), "missing {want} in:\n{env}");
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
    let p = perfdhcp(&cli, "c0", "10.78.0.1".parse().unwrap(), 500, 3, &macs, ns.len());
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
