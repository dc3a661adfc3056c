//! Dynamic leases and discovery: the only DHCP state that must be unique across heads.
//!
//! Known nodes need no lease state at all (their address is in `nodes.conf`). Two things
//! are different: an address from a dynamic pool must never be handed to two clients by
//! two heads, and an unknown MAC must be bound to a `discoverable` node exactly once.
//! The handler chain sees both only through [`LeaseAllocator`], a small synchronous trait:
//!
//! - synchronous, because the handler chain is pure and runs inline in the receive loop.
//!   The cluster's implementation ([`RaftLeases`](super::raft_leases::RaftLeases)) hands
//!   out pool addresses from blocks its head already owns through Raft, so `allocate`
//!   answers at once; `Ok(None)` ("not now") is left for the rare moments when no block
//!   is committed yet (start-up) and for discovery, decided by one Raft command in the
//!   background and found by the client's retransmission.
//! - idempotent per MAC: DISCOVER, REQUEST and later renewals of one client must all see
//!   the same address, so `allocate` returns the existing lease if there is one.
//! - `bind` is called when a pool address is ACKed: that is when a lease exists and must
//!   be recorded (an OFFER grants nothing).
//!
//! [`MemoryAllocator`] is the in-process implementation for tests and single-head labs.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::config::Subnet;
use super::MacAddr;
use crate::boot::view::BootView;

/// Why a lease or discovery could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The subnet has no pool; the handler chain should never ask.
    #[error("subnet {subnet} has no dynamic pool; add `pool:` to boot.dhcp.subnets.{subnet} to serve unknown MACs")]
    NoPool { subnet: String },
    /// Every pool address is leased, held by a head or declined.
    #[error("dynamic pool {pool} of subnet {subnet} is exhausted: every address is leased, reserved by a head or declined; enlarge boot.dhcp.subnets.{subnet}.pool or register the nodes")]
    Exhausted { subnet: String, pool: String },
    /// The backing store could not decide (e.g. no Raft leader and no local answer).
    #[error("lease store unavailable for {mac} in subnet {subnet}: {reason}; the client will retry, check the cluster's health (`wwctl` status)")]
    Unavailable {
        mac: String,
        subnet: String,
        reason: String,
    },
}

/// Pool allocation and discovery, decided once cluster-wide.
pub trait LeaseAllocator: Send + Sync {
    /// The address of `mac` in `subnet`'s pool: its existing lease, else a new one
    /// (offered, not yet leased). `Ok(None)`: no address right now but soon (the client
    /// retransmits); [`LeaseError::Exhausted`]: none left. Implementations must skip
    /// addresses that the `view` gives to known nodes.
    fn allocate(&self, mac: MacAddr, subnet: &Subnet, view: &BootView) -> Result<Option<Ipv4Addr>, LeaseError>;

    /// Changes whenever addresses were added after `allocate` may have answered
    /// `Ok(None)` for lack of them (a pool block landed): the server then retries the
    /// DISCOVERs it held back. None: this allocator never lacks addresses for a while.
    fn refilled(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// `ip` (from `allocate`) was ACKed to `mac` for `subnet.lease_secs`: record the lease.
    fn bind(&self, _mac: MacAddr, _ip: Ipv4Addr, _subnet: &Subnet) -> Result<(), LeaseError> {
        Ok(())
    }

    /// Bind `mac` to a `discoverable` node (the first in Warewulf's order not yet taken)
    /// and return its name; the same name again for the same MAC. `Ok(None)`: none left.
    fn discover(&self, mac: MacAddr, view: &BootView) -> Result<Option<String>, LeaseError>;

    /// The client gave its pool address back (DHCPRELEASE names it in `ciaddr`).
    /// Default: keep it (leases are per MAC and a stateless node will ask again at its
    /// next boot).
    fn release(&self, _mac: MacAddr, _ciaddr: Ipv4Addr, _subnet: &Subnet) -> Result<(), LeaseError> {
        Ok(())
    }

    /// The client found `ip` in use by someone else (DHCPDECLINE): never offer it again.
    fn decline(&self, _mac: MacAddr, _ip: Ipv4Addr, _subnet: &Subnet) -> Result<(), LeaseError> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct PoolState {
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    taken: HashSet<Ipv4Addr>,
    declined: HashSet<Ipv4Addr>,
    /// Next address to try (a rotating cursor, so a fresh allocation is O(1) amortised).
    cursor: u32,
}

/// Leases and discoveries in this process's memory (tests, single-head labs): lost on
/// restart and not shared with other heads.
#[derive(Debug, Default)]
pub struct MemoryAllocator {
    pools: Mutex<HashMap<String, PoolState>>,
    discovered: Mutex<HashMap<MacAddr, String>>,
}

impl MemoryAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of addresses currently leased in `subnet` (tests).
    pub fn leased(&self, subnet: &str) -> usize {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.get(subnet).map_or(0, |p| p.by_mac.len())
    }
}

impl LeaseAllocator for MemoryAllocator {
    fn allocate(&self, mac: MacAddr, subnet: &Subnet, view: &BootView) -> Result<Option<Ipv4Addr>, LeaseError> {
        let pool = subnet.pool.ok_or_else(|| LeaseError::NoPool {
            subnet: subnet.name.clone(),
        })?;
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let st = pools.entry(subnet.name.clone()).or_default();
        if let Some(&ip) = st.by_mac.get(&mac) {
            if pool.contains(ip) {
                return Ok(Some(ip));
            }
            // The pool was reconfigured under the lease.
            st.by_mac.remove(&mac);
            st.taken.remove(&ip);
        }
        let (start, size) = (u32::from(pool.start), pool.size());
        for i in 0..size {
            let off = (u64::from(st.cursor) + i) % size;
            let ip = Ipv4Addr::from(start + off as u32);
            if st.taken.contains(&ip) || st.declined.contains(&ip) || view.node_by_ip(ip).is_some() {
                continue;
            }
            st.cursor = ((off + 1) % size) as u32;
            st.taken.insert(ip);
            st.by_mac.insert(mac, ip);
            return Ok(Some(ip));
        }
        Err(LeaseError::Exhausted {
            subnet: subnet.name.clone(),
            pool: format!("{}-{}", pool.start, pool.end),
        })
    }

    fn discover(&self, mac: MacAddr, view: &BootView) -> Result<Option<String>, LeaseError> {
        let mut d = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = d.get(&mac) {
            return Ok(Some(n.clone()));
        }
        let taken: HashSet<&String> = d.values().collect();
        let Some(name) = view
            .discoverable()
            .map(|n| &n.name)
            .find(|n| !taken.contains(n))
            .cloned()
        else {
            return Ok(None);
        };
        d.insert(mac, name.clone());
        Ok(Some(name))
    }

    fn release(&self, mac: MacAddr, _ciaddr: Ipv4Addr, subnet: &Subnet) -> Result<(), LeaseError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = pools.get_mut(&subnet.name) {
            if let Some(ip) = st.by_mac.remove(&mac) {
                st.taken.remove(&ip);
            }
        }
        Ok(())
    }

    fn decline(&self, mac: MacAddr, ip: Ipv4Addr, subnet: &Subnet) -> Result<(), LeaseError> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let st = pools.entry(subnet.name.clone()).or_default();
        if st.by_mac.get(&mac) == Some(&ip) {
            st.by_mac.remove(&mac);
        }
        st.declined.insert(ip);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::dhcp::DhcpConfig;

    fn subnet(pool: &str) -> Subnet {
        let c = DhcpConfig::from_yaml(&format!(
            "interfaces: [{{name: br0, subnets: [s]}}]\nsubnets: {{s: {{network: 10.0.0.0/24, server: 10.0.0.1, pool: {pool}}}}}"
        ))
        .unwrap();
        c.subnets[0].clone()
    }

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, i])
    }

    #[test]
    fn leases_are_stable_per_mac_until_the_pool_is_exhausted() {
        let s = subnet("{start: 10.0.0.10, end: 10.0.0.12}");
        let a = MemoryAllocator::new();
        let v = BootView::default();
        let ips: Vec<_> = (1..=3).map(|i| a.allocate(mac(i), &s, &v).unwrap().unwrap()).collect();
        assert_eq!(
            ips,
            ["10.0.0.10", "10.0.0.11", "10.0.0.12"].map(|x| x.parse::<Ipv4Addr>().unwrap())
        );
        assert_eq!(
            a.allocate(mac(2), &s, &v).unwrap(),
            Some(ips[1]),
            "same MAC, same address"
        );
        let e = a.allocate(mac(4), &s, &v).unwrap_err();
        assert!(matches!(e, LeaseError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("enlarge boot.dhcp.subnets.s.pool"), "{e}");
        a.release(mac(1), Ipv4Addr::UNSPECIFIED, &s).unwrap();
        assert_eq!(
            a.allocate(mac(4), &s, &v).unwrap(),
            Some(ips[0]),
            "released address reused"
        );
        a.decline(mac(4), ips[0], &s).unwrap();
        assert!(a.allocate(mac(5), &s, &v).is_err(), "declined address never again");
        assert_eq!(a.leased("s"), 2);
    }

    #[test]
    fn discovery_binds_each_discoverable_node_once() {
        let mut st = crate::state::State::default();
        let conf = crate::model::parse_nodes_conf(
            "nodes:\n  d1: {discoverable: true}\n  d2: {discoverable: true}\n  n3: {}\n",
        )
        .unwrap();
        let r = st.apply(
            1,
            &crate::state::Request {
                audit: None,
                id: None,
                cmd: crate::state::Command::Import { conf },
            },
        );
        assert!(r.0.is_ok(), "{r:?}");
        let v = BootView::from_state(&st, 1);
        let a = MemoryAllocator::new();
        assert_eq!(a.discover(mac(1), &v).unwrap().as_deref(), Some("d1"));
        assert_eq!(a.discover(mac(2), &v).unwrap().as_deref(), Some("d2"));
        assert_eq!(a.discover(mac(1), &v).unwrap().as_deref(), Some("d1"), "idempotent");
        assert_eq!(a.discover(mac(3), &v).unwrap(), None);
    }
}
