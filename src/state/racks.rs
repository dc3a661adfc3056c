//! Racks in the replicated state.
//!
//! A rack is one boot network: a broadcast domain the heads sit on, or a subnet whose
//! DHCP requests reach the heads through a relay (`giaddr`). It carries what DHCP hands
//! out there (router, DNS, lease time, an optional pool for unknown MACs) and the
//! **ordered** list of heads that serve it, each with its own address *on that rack*
//! (for a relayed rack: the address the relay forwards to). The first healthy head of
//! the list answers DHCP; the others stand by (see `boot::dhcp::turn`). Nodes belong to
//! the rack whose network holds their address.
//!
//! Racks live here, not in each head's `wulfd.yaml`, so every head agrees on which
//! head serves what, `wwctl rack set` changes it without restarting anything, and a
//! head's own config only names the interfaces it may answer on.
//!
//! Validation is part of `apply` (pure): a rack whose network overlaps another's, a
//! pool or router outside the network, a head listed twice or a direct rack whose head
//! address lies outside the network is refused with what to change.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::images::summarize;
use super::{CommandError, Outcome, State, Versioned};
use crate::model;

/// One rack (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rack {
    /// The rack's boot network; nodes with an address inside belong to the rack.
    pub network: Ipv4Net,
    /// Requests arrive through a DHCP relay whose `giaddr` lies in `network`.
    #[serde(default)]
    pub relayed: bool,
    /// DHCP option 3 unless a node's device names a gateway.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DHCP option 6 unless a node has a `dns` tag.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// DHCP option 15.
    #[serde(default)]
    pub domain: Option<String>,
    /// Lease time in seconds (default: `boot::dhcp`'s).
    #[serde(default)]
    pub lease_secs: Option<u32>,
    /// Addresses for unknown MACs (discovery), both ends inclusive.
    #[serde(default)]
    pub pool: Option<RackPool>,
    /// The heads serving the rack, in order of preference.
    pub heads: Vec<RackHead>,
}

/// `pool` of a [`Rack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackPool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// A head serving a rack, at its address on that rack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackHead {
    /// Raft id of the head.
    pub id: u64,
    /// Its address as the rack's nodes reach it (server id, TFTP next-server, HTTP host).
    pub addr: Ipv4Addr,
}

impl Rack {
    /// Position of head `id` in the rack's order.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.heads.iter().position(|h| h.id == id)
    }

    /// Head `id`'s address on this rack.
    pub fn addr_of(&self, id: u64) -> Option<Ipv4Addr> {
        self.heads.iter().find(|h| h.id == id).map(|h| h.addr)
    }

    /// Whether `ip` is a node address of this rack.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        self.network.contains(&ip)
    }

    /// Check the rack alone (names, addresses, heads).
    pub fn validate(&self, name: &str) -> Result<(), CommandError> {
        model::validate_name("rack", name)?;
        let bad = |what: String| Err(CommandError::Invalid(format!("rack {name}: {what}")));
        let net = self.network;
        if net != net.trunc() {
            return bad(format!(
                "network {net} has host bits set; write the network address, {}",
                net.trunc()
            ));
        }
        if net.prefix_len() > 30 {
            return bad(format!(
                "network {net} has no room for nodes; use a prefix of /30 or shorter"
            ));
        }
        let usable = |ip: Ipv4Addr| net.contains(&ip) && ip != net.network() && ip != net.broadcast();
        if let Some(r) = self.router {
            if !usable(r) {
                return bad(format!("router {r} is not a host address of {net}"));
            }
        }
        if let Some(p) = self.pool {
            if !usable(p.start) || !usable(p.end) || p.start > p.end {
                return bad(format!(
                    "pool {}-{} must be an ascending range of host addresses of {net}",
                    p.start, p.end
                ));
            }
        }
        if let Some(d) = &self.domain {
            if d.is_empty() || d.len() > 253 || d.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            {
                return bad(format!("domain {d:?} is not a DNS domain name"));
            }
        }
        if self.lease_secs == Some(0) {
            return bad("a lease time of 0 s cannot be used; give at least 60 s".into());
        }
        if self.heads.is_empty() {
            return bad("no head serves it; give at least one with --head ID=ADDRESS".into());
        }
        for (i, h) in self.heads.iter().enumerate() {
            if self.heads[..i].iter().any(|o| o.id == h.id) {
                return bad(format!("head {} is listed twice; list each head once, in order", h.id));
            }
            if h.addr.is_unspecified() || h.addr.is_broadcast() || h.addr.is_multicast() {
                return bad(format!("head {} address {} cannot be reached by nodes", h.id, h.addr));
            }
            if !self.relayed && !usable(h.addr) {
                return bad(format!(
                    "head {} address {} is not on {net}; give the head's address on the rack \
                     (or mark the rack --relayed if a DHCP relay forwards its requests)",
                    h.id, h.addr
                ));
            }
            if self.pool.is_some_and(|p| p.start <= h.addr && h.addr <= p.end) {
                return bad(format!("head {} address {} lies inside the pool", h.id, h.addr));
            }
        }
        Ok(())
    }
}

/// Rack commands (see [`super::Command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RackCommand {
    /// Create or replace a rack. `expect`: `Some(0)` the rack must be new, `Some(v)` it
    /// must still be at version `v`, `None` unconditional.
    Put {
        name: String,
        rack: Rack,
        expect: Option<u64>,
    },
    /// Delete a rack. Refused while nodes have addresses in it, unless `force`.
    Delete { name: String, force: bool },
}

impl State {
    pub(super) fn apply_rack(&mut self, index: u64, cmd: &RackCommand) -> Result<Outcome, CommandError> {
        match cmd {
            RackCommand::Put { name, rack, expect } => {
                rack.validate(name)?;
                let cur = self.cluster.racks.get(name).map(|r| r.version);
                if let Some(expected) = *expect {
                    let actual = cur.unwrap_or(0);
                    if actual != expected {
                        return Err(match (expected, cur) {
                            (0, Some(_)) => CommandError::Exists {
                                kind: "rack".into(),
                                name: name.clone(),
                            },
                            (_, None) => CommandError::NotFound {
                                kind: "rack".into(),
                                name: name.clone(),
                            },
                            _ => CommandError::Conflict {
                                kind: "rack".into(),
                                name: name.clone(),
                                expected,
                                actual,
                            },
                        });
                    }
                }
                for (other, r) in &self.cluster.racks {
                    let (a, b) = (&rack.network, &r.value.network);
                    if other != name && (a.contains(&b.network()) || b.contains(&a.network())) {
                        return Err(CommandError::Invalid(format!(
                            "rack {name}: network {a} overlaps rack {other} ({b}); give each rack its own network"
                        )));
                    }
                }
                self.cluster.racks.insert(
                    name.clone(),
                    Versioned {
                        version: index,
                        value: rack.clone(),
                    },
                );
                Ok(Outcome {
                    changed: vec![name.clone()],
                    ..Default::default()
                })
            }
            RackCommand::Delete { name, force } => {
                let Some(r) = self.cluster.racks.get(name) else {
                    return Err(CommandError::NotFound {
                        kind: "rack".into(),
                        name: name.clone(),
                    });
                };
                let net = r.value.network;
                let users = self.users(|c| {
                    c.network_devices.values().any(|d| {
                        d.ipaddr
                            .as_deref()
                            .and_then(|a| a.split('/').next())
                            .and_then(|a| a.parse::<Ipv4Addr>().ok())
                            .is_some_and(|a| net.contains(&a))
                    })
                });
                if !users.is_empty() && !force {
                    return Err(CommandError::InUse {
                        name: format!("rack {name}"),
                        users: format!(
                            "{} (their addresses are in {net}; they would get no DHCP answer — use --force to delete anyway)",
                            summarize(&users)
                        ),
                    });
                }
                self.cluster.racks.remove(name);
                Ok(Outcome {
                    deleted: vec![name.clone()],
                    ..Default::default()
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Request};

    fn rack(net: &str, heads: &[(u64, &str)]) -> Rack {
        Rack {
            network: net.parse().unwrap(),
            relayed: false,
            router: None,
            dns: vec![],
            domain: None,
            lease_secs: None,
            pool: None,
            heads: heads
                .iter()
                .map(|(id, a)| RackHead {
                    id: *id,
                    addr: a.parse().unwrap(),
                })
                .collect(),
        }
    }

    fn put(s: &mut State, i: u64, name: &str, r: Rack, expect: Option<u64>) -> Result<Outcome, CommandError> {
        s.apply(
            i,
            &Request {
                audit: None,
                id: None,
                cmd: Command::Rack(RackCommand::Put {
                    name: name.into(),
                    rack: r,
                    expect,
                }),
            },
        )
        .0
    }

    #[test]
    fn put_validates_and_versions() {
        let mut s = State::default();
        put(
            &mut s,
            5,
            "r1",
            rack("10.1.0.0/24", &[(1, "10.1.0.1"), (2, "10.1.0.2")]),
            Some(0),
        )
        .unwrap();
        assert_eq!(s.cluster.racks["r1"].version, 5);
        // A second create of the same name is refused; a set at the read version works.
        assert!(matches!(
            put(&mut s, 6, "r1", rack("10.1.0.0/24", &[(1, "10.1.0.1")]), Some(0)),
            Err(CommandError::Exists { .. })
        ));
        put(&mut s, 7, "r1", rack("10.1.0.0/24", &[(2, "10.1.0.2")]), Some(5)).unwrap();
        assert!(matches!(
            put(&mut s, 8, "r1", rack("10.1.0.0/24", &[(1, "10.1.0.1")]), Some(5)),
            Err(CommandError::Conflict {
                expected: 5,
                actual: 7,
                ..
            })
        ));
        assert_eq!(s.cluster.racks["r1"].value.heads[0].id, 2);
    }

    #[test]
    fn bad_racks_are_refused_with_the_reason() {
        let mut s = State::default();
        let cases: Vec<(Rack, &str)> = vec![
            (rack("10.1.0.0/24", &[]), "no head serves it"),
            (rack("10.1.0.5/24", &[(1, "10.1.0.1")]), "host bits"),
            (rack("10.1.0.0/24", &[(1, "10.2.0.1")]), "not on 10.1.0.0/24"),
            (rack("10.1.0.0/24", &[(1, "10.1.0.1"), (1, "10.1.0.2")]), "listed twice"),
            (
                Rack {
                    pool: Some(RackPool {
                        start: "10.1.0.9".parse().unwrap(),
                        end: "10.1.0.3".parse().unwrap(),
                    }),
                    ..rack("10.1.0.0/24", &[(1, "10.1.0.1")])
                },
                "ascending range",
            ),
            (
                Rack {
                    router: Some("10.9.0.1".parse().unwrap()),
                    ..rack("10.1.0.0/24", &[(1, "10.1.0.1")])
                },
                "router",
            ),
        ];
        for (r, why) in cases {
            let e = put(&mut s, 1, "r1", r, None).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
        }
        assert!(s.cluster.racks.is_empty(), "nothing half-applied");
        // A relayed rack's heads sit elsewhere (where the relay forwards to).
        put(
            &mut s,
            2,
            "far",
            Rack {
                relayed: true,
                ..rack("10.7.0.0/24", &[(1, "10.0.0.1")])
            },
            None,
        )
        .unwrap();
    }

    #[test]
    fn overlapping_networks_are_refused() {
        let mut s = State::default();
        put(&mut s, 1, "r1", rack("10.1.0.0/16", &[(1, "10.1.0.1")]), None).unwrap();
        let e = put(&mut s, 2, "r2", rack("10.1.4.0/24", &[(1, "10.1.4.1")]), None).unwrap_err();
        assert!(e.to_string().contains("overlaps rack r1"), "{e}");
        // Changing r1 itself is not an overlap with itself.
        put(&mut s, 3, "r1", rack("10.1.0.0/16", &[(2, "10.1.0.2")]), None).unwrap();
    }

    #[test]
    fn delete_refuses_a_rack_in_use_unless_forced() {
        let mut s = State::default();
        put(&mut s, 1, "r1", rack("10.1.0.0/24", &[(1, "10.1.0.1")]), None).unwrap();
        let node = model::NodeConf {
            network_devices: [(
                "default".to_string(),
                model::NetDev {
                    ipaddr: Some("10.1.0.10".into()),
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        s.nodes.insert(
            "n1".into(),
            Versioned {
                version: 1,
                value: node,
            },
        );
        let del = |force| Request {
            audit: None,
            id: None,
            cmd: Command::Rack(RackCommand::Delete {
                name: "r1".into(),
                force,
            }),
        };
        let e = s.apply(2, &del(false)).0.unwrap_err();
        assert!(matches!(e, CommandError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("n1"), "{e}");
        s.apply(3, &del(true)).0.unwrap();
        assert!(s.cluster.racks.is_empty());
        assert!(matches!(s.apply(4, &del(true)).0, Err(CommandError::NotFound { .. })));
    }
}
