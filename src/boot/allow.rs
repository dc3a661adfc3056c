//! Which clients the boot side answers (HTTP boot routes and TFTP): least exposure.
//!
//! Warewulf serves images and overlays to anyone who reaches its port on any interface
//! (Warewulf #336). A head here answers boot requests only from addresses that can be a
//! node of this cluster: inside a rack's network (`wwctl rack`, every rack: a head takes
//! over another rack's nodes on failover), inside a DHCP subnet this head serves
//! (`boot.dhcp`), an address some node is configured with, this host itself (loopback),
//! or a network the operator adds (`boot.allow`). Anything else gets nothing: no file, no
//! script, no hint that the path exists — a 403 without a body on HTTP, no answer on TFTP
//! — and a trace in the log (rate-limited, with a count).
//!
//! The check reads the current boot view, so a rack added with `wwctl rack add` is
//! allowed at once, on every head.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::view::ViewRx;

/// The boot side's client check.
#[derive(Debug)]
pub struct Allow {
    view: ViewRx,
    /// `boot.allow` and this head's DHCP subnets.
    networks: Vec<Ipv4Net>,
    refused: crate::logging::Every,
}

impl Allow {
    pub fn new(view: ViewRx, networks: Vec<Ipv4Net>) -> Allow {
        Allow {
            view,
            networks,
            refused: crate::logging::Every::new(Duration::from_secs(10)),
        }
    }

    /// Whether `ip` may be answered.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return v6.is_loopback(),
            },
            IpAddr::V4(v4) => v4,
        };
        if ip.is_loopback() || self.networks.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        let view = self.view.borrow();
        view.racks.values().any(|r| r.network.contains(&ip)) || view.node_by_ip(ip).is_some()
    }

    /// `allows`, logging a refusal (at most once per 10 s, with a count) for `what`.
    pub fn check(&self, ip: IpAddr, what: &str) -> bool {
        if self.allows(ip) {
            return true;
        }
        if let Some(n) = self.refused.tick() {
            tracing::warn!(
                client = %ip,
                refused_since_last_report = n,
                "{what}: refused a client outside every rack network, DHCP subnet and boot.allow network"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::view::BootView;
    use crate::state::{Rack, State};

    fn view_with_rack() -> ViewRx {
        let mut s = State::default();
        let rack: Rack = serde_json::from_value(serde_json::json!({"network": "10.10.0.0/24", "heads": []})).unwrap();
        s.cluster.racks.insert(
            "rack1".into(),
            crate::state::Versioned {
                value: rack,
                version: 1,
            },
        );
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(BootView::from_state(&s, 1)));
        rx
    }

    #[test]
    fn racks_subnets_loopback_and_extra_networks_only() {
        let a = Allow::new(view_with_rack(), vec!["192.168.5.0/24".parse().unwrap()]);
        for ok in ["10.10.0.77", "192.168.5.9", "127.0.0.1", "::1", "::ffff:10.10.0.3"] {
            assert!(a.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.10.1.1", "8.8.8.8", "192.168.6.1", "fe80::1"] {
            assert!(!a.check(no.parse().unwrap(), "test"), "{no}");
        }
    }
}
