//! Dynamic DHCP leases and node discovery, decided by Raft.
//!
//! Two heads can see the same unknown MAC at the same moment. Deciding in the
//! replicated state machine means one order for everyone: an address is handed out
//! once, and an unknown MAC is assigned to a `discoverable` node exactly once.
//! Commands carry the time (`now`, from the head that proposes them), so apply
//! stays deterministic.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{CommandError, Outcome, State, Versioned};
use crate::model::{self, NodeConf, UniqueKey};

/// A dynamic lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    /// Unix seconds.
    pub expires: u64,
}

impl State {
    /// Give `mac` an address in `first..=last`: its current lease (extended), else
    /// the lowest address that no node uses and no unexpired lease holds.
    pub(super) fn allocate_lease(
        &mut self,
        mac: &str,
        first: Ipv4Addr,
        last: Ipv4Addr,
        lease_secs: u64,
        now: u64,
    ) -> Result<Outcome, CommandError> {
        let mac = model::normalize_mac(mac)?;
        if u32::from(first) > u32::from(last) {
            return Err(CommandError::Invalid(format!("pool {first}-{last} is empty")));
        }
        let in_pool = |ip: &Ipv4Addr| (u32::from(first)..=u32::from(last)).contains(&u32::from(*ip));
        let expires = now.saturating_add(lease_secs);
        if let Some((ip, _)) = self.leases.iter().find(|(ip, l)| l.mac == mac && in_pool(ip)) {
            let ip = *ip;
            self.leases.insert(ip, Lease { mac, expires });
            return Ok(leased(ip));
        }
        for n in u32::from(first)..=u32::from(last) {
            let ip = Ipv4Addr::from(n);
            if self.unique.contains_key(&UniqueKey::Ip(ip.to_string())) {
                continue;
            }
            match self.leases.get(&ip) {
                Some(l) if l.expires > now => continue,
                _ => {
                    self.leases.insert(ip, Lease { mac, expires });
                    return Ok(leased(ip));
                }
            }
        }
        Err(CommandError::Invalid(format!(
            "dynamic pool {first}-{last} is exhausted; enlarge it or register the node"
        )))
    }

    /// Drop `mac`'s lease (DHCP RELEASE).
    pub(super) fn release_lease(&mut self, mac: &str) -> Result<Outcome, CommandError> {
        let mac = model::normalize_mac(mac)?;
        let gone: Vec<Ipv4Addr> = self
            .leases
            .iter()
            .filter(|(_, l)| l.mac == mac)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &gone {
            self.leases.remove(ip);
        }
        Ok(Outcome {
            changed: vec![],
            deleted: gone.iter().map(|ip| ip.to_string()).collect(),
        })
    }

    /// Assign an unknown `mac` to the first discoverable node (by name, as Warewulf),
    /// on its primary network device; the node stops being discoverable. A MAC that
    /// already belongs to a node just answers that node.
    pub(super) fn discover(&mut self, index: u64, mac: &str) -> Result<Outcome, CommandError> {
        let mac = model::normalize_mac(mac)?;
        if let Some(owner) = self.unique.get(&UniqueKey::Mac(mac.clone())) {
            return Ok(Outcome {
                changed: vec![owner.clone()],
                deleted: vec![],
            });
        }
        let profiles: BTreeMap<String, NodeConf> = self
            .profiles
            .iter()
            .map(|(n, v)| (n.clone(), v.value.clone()))
            .collect();
        let found = self.nodes.iter().find_map(|(name, v)| {
            let merged = model::merge(name, &v.value, &profiles).ok()?;
            (merged.conf.discoverable == Some(true)).then(|| (name.clone(), merged))
        });
        let Some((name, merged)) = found else {
            return Err(CommandError::NotFound {
                kind: "discoverable node".into(),
                name: mac,
            });
        };
        let netdev = merged.primary_netdev().unwrap_or("default").to_string();
        let node = self.nodes.get_mut(&name).expect("found above");
        let mut conf = node.value.clone();
        conf.network_devices.entry(netdev).or_default().hwaddr = Some(mac.clone());
        conf.discoverable = Some(false);
        *node = Versioned {
            version: index,
            value: conf,
        };
        self.unique.insert(UniqueKey::Mac(mac), name.clone());
        Ok(Outcome {
            changed: vec![name],
            deleted: vec![],
        })
    }
}

fn leased(ip: Ipv4Addr) -> Outcome {
    Outcome {
        changed: vec![ip.to_string()],
        deleted: vec![],
    }
}
