//! # Built-in DHCPv4 server of a head
//!
//! A head answers DHCP itself so that no dhcpd/dnsmasq/Kea needs to be configured, kept
//! in sync with `nodes.conf`, or failed over. The design, and why:
//!
//! - **Off unless told.** [`DhcpConfig`] serves nothing until `interfaces` is non-empty,
//!   and a request is only answered for a subnet configured on the interface it arrived
//!   on (or, when relayed, for a subnet that accepts relays and contains `giaddr`). A head
//!   on a shared network must never become a rogue DHCP server.
//! - **Sans-IO core.** [`handlers`] turns one received datagram into zero or one reply
//!   ([`Verdict`]) with no sockets, clocks or tasks: an ordered chain of handlers over one
//!   request [`Context`] (the shape of bluecatengineering/dora), each returning continue,
//!   respond or no-response. Every protocol decision — which subnet, which address,
//!   which boot file, where the reply goes — is unit-testable from fabricated packets.
//! - **Reads only the [`BootView`](crate::boot::view::BootView).** Known nodes are a hash
//!   lookup by MAC in the immutable view republished after Raft applies, so answering
//!   never waits on an election or a disk.
//! - **State that must be unique cluster-wide is behind a trait.** Dynamic pool leases and
//!   discovery of unknown MACs must happen exactly once across heads, so they go through
//!   [`LeaseAllocator`]; tests use [`MemoryAllocator`], heads [`raft_leases::RaftLeases`]
//!   (per-head address blocks and batched bindings through Raft).
//! - **The server is thin.** [`server`] owns sockets (one per interface, bound with
//!   `SO_BINDTODEVICE`), reply addressing (RFC 2131 §4.1) and shutdown; it sends at most
//!   one reply per request and only to `giaddr`, `ciaddr` inside a served subnet, or the
//!   broadcast address of the receiving link, so it can never be used to amplify traffic
//!   towards a third party.
//!
//! | file | job |
//! |---|---|
//! | [`config`] | `boot: dhcp:` section of `wulfd.yaml`: wire format, validation |
//! | [`handlers`] | request context, handler chain, reply building and addressing |
//! | [`lease`] | [`LeaseAllocator`] (pools, discovery) and the in-memory implementation |
//! | [`observe`] | per-reason drop counts, rate-limited debug lines, the info summary |
//! | [`server`] | UDP sockets per interface, the receive loop, shutdown |

pub mod config;
pub mod handlers;
pub mod lease;
pub mod limit;
pub mod observe;
pub mod raft_leases;
pub mod server;
#[cfg(test)]
mod tests;

use std::fmt;

pub use config::{DhcpConfig, DhcpConfigError, DhcpConfigWire, IfAddrs, Interface, Pool, RackOrder, RackPlan, Subnet};
pub use handlers::{
    handle_packet, Action, AllServing, Chain, Context, Destination, Handler, RackHealth, RackTurn, Reply, Skip, Verdict,
};
pub use lease::{LeaseAllocator, LeaseError, MemoryAllocator};
pub use server::{bind_interface, DhcpError, DhcpServer, Ports, Stats};

/// An Ethernet hardware address (DHCP `chaddr` with `htype` 1, `hlen` 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Dash-separated lowercase form (`aa-bb-cc-dd-ee-ff`, iPXE's `${mac:hexhyp}`), safe in
    /// any URL path.
    pub fn hyphenated(&self) -> String {
        let b = self.0;
        format!(
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Display for MacAddr {
    /// Colon-separated lowercase form, as [`crate::model::normalize_mac`] writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod mac_tests {
    use super::MacAddr;

    #[test]
    fn mac_forms_match_the_model_and_ipxe() {
        let m = MacAddr([0xaa, 0xbb, 0xcc, 0x0d, 0xee, 0x01]);
        assert_eq!(m.to_string(), "aa:bb:cc:0d:ee:01");
        assert_eq!(crate::model::normalize_mac(&m.to_string()).unwrap(), m.to_string());
        assert_eq!(m.hyphenated(), "aa-bb-cc-0d-ee-01");
    }
}
