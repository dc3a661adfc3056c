//! The cluster's [`LeaseAllocator`]: pool addresses and discovery decided by Raft.
//!
//! The DHCP handler is synchronous and must never wait for consensus while a
//! client waits for an OFFER. So: if the [`BootView`] already holds the answer
//! (a lease for this MAC, or the node this MAC was discovered as), answer it;
//! otherwise propose the command in the background and answer "not yet". The
//! client retransmits its DISCOVER within seconds, by which time the decision is in
//! every head's view. Two heads proposing for one MAC get one decision (the state
//! machine makes the second a no-op that returns the first answer).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::Subnet;
use super::lease::{LeaseAllocator, LeaseError};
use super::MacAddr;
use crate::boot::view::BootView;
use crate::client::Client;
use crate::state::Command;

/// Proposes lease and discovery commands through this head's admin API.
pub struct RaftLeases {
    client: Client,
    /// Commands in flight, so a retransmitting client does not queue duplicates.
    inflight: Arc<Mutex<HashSet<String>>>,
}

impl RaftLeases {
    /// `own_grpc`: this head's admin address (writes are forwarded to the leader).
    pub fn new(own_grpc: String) -> RaftLeases {
        RaftLeases {
            client: Client::new(vec![own_grpc]).with_deadline(std::time::Duration::from_secs(10)),
            inflight: Arc::default(),
        }
    }

    fn propose(&self, key: String, cmd: Command) {
        if !self.inflight.lock().expect("inflight").insert(key.clone()) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inflight.lock().expect("inflight").remove(&key);
            return;
        };
        let client = self.client.clone();
        let inflight = self.inflight.clone();
        rt.spawn(async move {
            if let Err(e) = client.write(cmd).await {
                tracing::info!(%key, "DHCP decision not taken: {e}");
            }
            inflight.lock().expect("inflight").remove(&key);
        });
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LeaseAllocator for RaftLeases {
    fn allocate(&self, mac: MacAddr, subnet: &Subnet, view: &BootView) -> Result<Option<Ipv4Addr>, LeaseError> {
        let Some(pool) = subnet.pool else { return Ok(None) };
        let m = mac.to_string();
        let lease_secs = u64::from(subnet.lease_secs);
        if let Some((ip, expires)) = view.leases.get(&m) {
            if pool.contains(*ip) {
                // Renew in the background once half the lease has passed.
                if expires.saturating_sub(now()) < lease_secs / 2 {
                    self.propose(format!("lease {m}"), lease_cmd(&m, pool.start, pool.end, lease_secs));
                }
                return Ok(Some(*ip));
            }
        }
        self.propose(format!("lease {m}"), lease_cmd(&m, pool.start, pool.end, lease_secs));
        Ok(None)
    }

    fn discover(&self, mac: MacAddr, view: &BootView) -> Result<Option<String>, LeaseError> {
        let m = mac.to_string();
        if let Some(n) = view.node_by_mac(&m) {
            return Ok(Some(n.name.clone()));
        }
        if view.discoverable().next().is_none() {
            return Ok(None);
        }
        self.propose(format!("discover {m}"), Command::Discover { mac: m });
        Ok(None)
    }

    fn release(&self, mac: MacAddr, _subnet: &Subnet) -> Result<(), LeaseError> {
        let m = mac.to_string();
        self.propose(format!("release {m}"), Command::ReleaseLease { mac: m });
        Ok(())
    }
}

fn lease_cmd(mac: &str, first: Ipv4Addr, last: Ipv4Addr, lease_secs: u64) -> Command {
    Command::AllocateLease {
        mac: mac.to_string(),
        first,
        last,
        lease_secs,
        now: now(),
    }
}
