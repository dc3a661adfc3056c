//! Dynamic DHCP pools and node discovery, decided by Raft.
//!
//! # Pools: per-head address blocks (DHCP failover's pool split, through Raft)
//!
//! A DHCP client must get its OFFER at once, so a head cannot wait for a Raft commit
//! per packet; yet two heads must never hand one address to two clients. So the
//! replicated state does not pick each client's address: it gives each head a
//! **block** of free pool addresses ([`Command::ReservePoolBlock`](super::Command)),
//! and a head hands out, locally and synchronously, only addresses of blocks that are
//! committed as its own. Bindings (MAC → address, expiry) are recorded afterwards in
//! batches ([`Command::RecordLeases`](super::Command)) so every head learns them.
//!
//! Blocks belong to a **holder**: one run of one head's allocator (a restarted head is
//! a new holder, so it never reuses what its previous run may have handed out without
//! recording). The rules that make a double hand-out impossible, with `L` the pool's
//! lease time and `GRACE` ([`GRACE_SECS`]) an allowance for clock skew between heads:
//!
//! 1. A holder hands out a never-used address of its blocks only while its own clock is
//!    before the holder's expiry it has seen committed (every holder command extends
//!    it to `now + HOLDER_TTL_SECS`); a client's first lease from it therefore ends
//!    before `expiry + 2L` (one lease, plus one renewal before it was recorded).
//! 2. Any head may renew a *recorded* binding (the same MAC, the same address) while the
//!    recorded expiry `e` has not passed, so no client holds it beyond `e + L`.
//! 3. An address goes back into circulation only by a later reservation, and only if it
//!    is not declined and either (a) it was bound once and `now > e + L + GRACE`
//!    (its holder removed it from its free list when it handed it out), or (b) it was
//!    never recorded as bound and its holder is gone or dead
//!    (`now > holder expiry + 2L + GRACE`).
//!
//! A head that dies with bindings it did not record therefore costs nothing but time:
//! those addresses stay in its block until rule 3b returns them. A RELEASE unbinds the
//! MAC at once (no head answers it from that binding any more) but the address waits out
//! rule 3a, because another head may still renew from a view that has not seen the
//! release. DECLINE marks an address unusable for good.
//!
//! Reservation walks a per-pool cursor, reclaiming on the way, so a command costs
//! O(block) amortised, and a MAC index makes every binding O(log n). Everything is
//! decided from the command's contents (the proposer's `now`), so apply stays pure.
//!
//! # Discovery
//!
//! An unknown MAC is assigned to a `discoverable` node exactly once: the first
//! `Discover` for it decides, a second one (another head saw the same client) answers
//! the same node.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{CommandError, Outcome, State, Versioned};
use crate::model::{self, NodeConf, UniqueKey};

/// How long a holder's blocks stay its own after its last command (it sends a
/// keep-alive well within this).
pub const HOLDER_TTL_SECS: u64 = 600;
/// Allowance for clock differences between heads (rules 3a and 3b).
pub const GRACE_SECS: u64 = 120;
/// Largest block one reservation may ask for.
pub const MAX_BLOCK: u32 = 4096;

/// A recorded dynamic lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: String,
    /// Unix seconds.
    pub expires: u64,
}

/// A pool address that is not free: in a holder's block, bound, or declined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolAddr {
    /// The holder whose block holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// 0: never recorded as bound. Else: not reusable before this time (rule 3a).
    #[serde(default)]
    pub hold_until: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declined: bool,
}

/// One allocator run of one head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub head: u64,
    /// Unix seconds; the holder hands out new addresses only before this.
    pub expires: u64,
    /// Longest lease time of its pools (rule 3b).
    pub lease_secs: u64,
}

/// A change a holder records in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// `mac` was ACKed `ip` until `expires` (first binding or renewal).
    Bind {
        mac: String,
        ip: Ipv4Addr,
        expires: u64,
        lease_secs: u64,
    },
    /// DHCPRELEASE.
    Release { mac: String, ip: Ipv4Addr },
    /// DHCPDECLINE: another host uses `ip`; never hand it out again.
    Decline { mac: String, ip: Ipv4Addr },
}

impl LeaseOp {
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            LeaseOp::Bind { ip, .. } | LeaseOp::Release { ip, .. } | LeaseOp::Decline { ip, .. } => *ip,
        }
    }
}

/// Every dynamic pool's replicated state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolTable {
    /// Addresses that are not free (absent = free).
    #[serde(default)]
    pub addrs: BTreeMap<Ipv4Addr, PoolAddr>,
    #[serde(default)]
    pub holders: BTreeMap<u64, Holder>,
    /// Per pool (`first-last`): offset where the next reservation starts looking.
    #[serde(default)]
    pub cursors: BTreeMap<String, u32>,
    /// Derived: bound MAC → address. Rebuilt by [`PoolTable::rebuild_index`].
    #[serde(skip)]
    by_mac: HashMap<String, Ipv4Addr>,
}

impl PartialEq for PoolTable {
    fn eq(&self, o: &Self) -> bool {
        self.addrs == o.addrs && self.holders == o.holders && self.cursors == o.cursors
    }
}

impl PoolTable {
    pub fn rebuild_index(&mut self) {
        self.by_mac = self
            .addrs
            .iter()
            .filter_map(|(ip, a)| a.lease.as_ref().map(|l| (l.mac.clone(), *ip)))
            .collect();
    }

    /// The recorded lease of `mac` (normalised), with its address.
    pub fn lease_of(&self, mac: &str) -> Option<(Ipv4Addr, &Lease)> {
        let ip = *self.by_mac.get(mac)?;
        self.addrs.get(&ip)?.lease.as_ref().map(|l| (ip, l))
    }

    /// Every recorded lease.
    pub fn leases(&self) -> impl Iterator<Item = (Ipv4Addr, &Lease)> {
        self.addrs
            .iter()
            .filter_map(|(ip, a)| a.lease.as_ref().map(|l| (*ip, l)))
    }

    fn holder_dead(&self, h: Option<u64>, now: u64) -> bool {
        match h.and_then(|h| self.holders.get(&h)) {
            None => true,
            Some(h) => {
                now > h
                    .expires
                    .saturating_add(h.lease_secs.saturating_mul(2))
                    .saturating_add(GRACE_SECS)
            }
        }
    }

    /// Rule 3: may `a` join another block now?
    fn reclaimable(&self, a: &PoolAddr, now: u64) -> bool {
        if a.declined || now <= a.hold_until {
            return false;
        }
        a.hold_until > 0 || self.holder_dead(a.holder, now)
    }

    fn unbind(&mut self, ip: Ipv4Addr) {
        if let Some(l) = self.addrs.get_mut(&ip).and_then(|a| a.lease.take()) {
            if self.by_mac.get(&l.mac) == Some(&ip) {
                self.by_mac.remove(&l.mac);
            }
        }
    }
}

impl State {
    /// Give `holder` up to `size` free addresses of `first..=last` (rule 3), lowest
    /// first from the pool's cursor, skipping node addresses; extend its expiry.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reserve_pool_block(
        &mut self,
        holder: u64,
        head: u64,
        first: Ipv4Addr,
        last: Ipv4Addr,
        size: u32,
        lease_secs: u64,
        now: u64,
    ) -> Result<Outcome, CommandError> {
        let (lo, hi) = (u32::from(first), u32::from(last));
        if lo > hi {
            return Err(CommandError::Invalid(format!(
                "pool {first}-{last} is empty; its start must not be after its end"
            )));
        }
        if size == 0 || size > MAX_BLOCK {
            return Err(CommandError::Invalid(format!(
                "a pool block must have 1 to {MAX_BLOCK} addresses, not {size}"
            )));
        }
        let pool_size = u64::from(hi - lo) + 1;
        let key = format!("{first}-{last}");
        let start = u64::from(self.pool.cursors.get(&key).copied().unwrap_or(0)) % pool_size;
        let mut got = Vec::new();
        let mut next = start;
        for i in 0..pool_size {
            if got.len() >= size as usize {
                break;
            }
            let off = (start + i) % pool_size;
            next = (off + 1) % pool_size;
            let ip = Ipv4Addr::from(lo + off as u32);
            if self.unique.contains_key(&UniqueKey::Ip(ip.to_string())) {
                continue;
            }
            let free = match self.pool.addrs.get(&ip) {
                None => true,
                Some(a) => self.pool.reclaimable(a, now),
            };
            if free {
                got.push(ip);
            }
        }
        if got.is_empty() {
            return Err(CommandError::PoolExhausted { pool: key });
        }
        for ip in &got {
            self.pool.unbind(*ip);
            self.pool.addrs.insert(
                *ip,
                PoolAddr {
                    holder: Some(holder),
                    ..Default::default()
                },
            );
        }
        self.pool.cursors.insert(key, next as u32);
        let h = self.pool.holders.entry(holder).or_insert(Holder {
            head,
            expires: 0,
            lease_secs: 0,
        });
        h.expires = h.expires.max(now.saturating_add(HOLDER_TTL_SECS));
        h.lease_secs = h.lease_secs.max(lease_secs);
        Ok(Outcome {
            changed: got.iter().map(|ip| ip.to_string()).collect(),
            deleted: vec![],
            summary: None,
        })
    }

    /// Apply a holder's batch of bindings, releases and declines; extend its expiry.
    /// Each op is accepted or refused on its own (refused ones are listed in
    /// `deleted` as `ip mac`): a batch is many clients, one's conflict must not drop
    /// the others'. An empty batch is the holder's keep-alive.
    pub(super) fn record_leases(&mut self, holder: u64, now: u64, ops: &[LeaseOp]) -> Result<Outcome, CommandError> {
        let Some(h) = self.pool.holders.get_mut(&holder) else {
            return Err(CommandError::NotFound {
                kind: "pool holder".into(),
                name: format!("{holder} (its blocks were returned after it expired; reserve a new block)"),
            });
        };
        h.expires = h.expires.max(now.saturating_add(HOLDER_TTL_SECS));
        let mut refused = Vec::new();
        for op in ops {
            let mac = match op {
                LeaseOp::Bind { mac, .. } | LeaseOp::Release { mac, .. } | LeaseOp::Decline { mac, .. } => mac,
            };
            let Ok(mac) = model::normalize_mac(mac) else {
                refused.push(format!("{} {mac}", op.ip()));
                continue;
            };
            if !self.pool.apply_op(holder, &mac, op) {
                refused.push(format!("{} {mac}", op.ip()));
            }
        }
        Ok(Outcome {
            changed: vec![],
            deleted: refused,
            summary: None,
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
                summary: None,
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
            summary: None,
        })
    }
}

impl PoolTable {
    /// One op of `holder`'s batch; `mac` is normalised. Returns whether it was accepted.
    fn apply_op(&mut self, holder: u64, mac: &str, op: &LeaseOp) -> bool {
        let ip = op.ip();
        let Some(a) = self.addrs.get(&ip) else {
            return false; // not in any block: nobody may have handed it out
        };
        let bound_to_mac = a.lease.as_ref().is_some_and(|l| l.mac == mac);
        // Handed out by this holder from its block and not recorded yet.
        let fresh_own = a.lease.is_none() && a.hold_until == 0 && a.holder == Some(holder);
        match op {
            LeaseOp::Bind {
                expires, lease_secs, ..
            } => {
                if a.declined || !(bound_to_mac || fresh_own) {
                    return false;
                }
                // The MAC moves: its old binding ends (that address waits out rule 3a).
                if let Some(old) = self.by_mac.get(mac).copied().filter(|o| *o != ip) {
                    self.unbind(old);
                }
                let a = self.addrs.get_mut(&ip).expect("checked above");
                let expires = a.lease.as_ref().map_or(*expires, |l| l.expires.max(*expires));
                a.lease = Some(Lease {
                    mac: mac.to_owned(),
                    expires,
                });
                a.hold_until = a
                    .hold_until
                    .max(expires.saturating_add(*lease_secs).saturating_add(GRACE_SECS));
                self.by_mac.insert(mac.to_owned(), ip);
                true
            }
            LeaseOp::Release { .. } => {
                if !bound_to_mac {
                    return false;
                }
                self.unbind(ip);
                true
            }
            LeaseOp::Decline { .. } => {
                if !(bound_to_mac || fresh_own) {
                    return false;
                }
                self.unbind(ip);
                self.addrs.get_mut(&ip).expect("checked above").declined = true;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ApplyResult, Command, Request};

    const H1: u64 = 101;
    const H2: u64 = 202;
    const L: u64 = 100;

    fn req(cmd: Command) -> Request {
        Request {
            id: None,
            cmd,
            audit: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A state whose node n1 has 10.0.0.2 (inside the test pools).
    fn state() -> State {
        let mut s = State::default();
        let conf = model::parse_nodes_conf(
            "nodes:\n  n1:\n    network devices:\n      default: {hwaddr: \"aa:bb:cc:dd:ee:01\", ipaddr: 10.0.0.2}\n",
        )
        .unwrap();
        assert!(s.apply(1, &req(Command::Import { conf })).0.is_ok());
        s
    }

    fn reserve(s: &mut State, holder: u64, last: &str, size: u32, now: u64) -> Result<Vec<Ipv4Addr>, CommandError> {
        let r = s.apply(
            2,
            &req(Command::ReservePoolBlock {
                holder,
                head: holder / 100,
                first: ip("10.0.0.1"),
                last: ip(last),
                size,
                lease_secs: L,
                now,
            }),
        );
        r.0.map(|o| o.changed.iter().map(|x| x.parse().unwrap()).collect())
    }

    fn record(s: &mut State, holder: u64, now: u64, ops: Vec<LeaseOp>) -> ApplyResult {
        s.apply(3, &req(Command::RecordLeases { holder, now, ops }))
    }

    fn bind(mac: &str, ip: Ipv4Addr, expires: u64) -> LeaseOp {
        LeaseOp::Bind {
            mac: mac.into(),
            ip,
            expires,
            lease_secs: L,
        }
    }

    fn refused(r: ApplyResult) -> Vec<String> {
        r.0.expect("batch applies").deleted
    }

    #[test]
    fn two_holders_reserving_in_turn_never_overlap_and_skip_node_addresses() {
        let mut s = state();
        let mut seen = std::collections::HashSet::new();
        for round in 0..20 {
            for h in [H1, H2] {
                for a in reserve(&mut s, h, "10.0.1.255", 7, 1000 + round).unwrap() {
                    assert!(seen.insert(a), "{a} reserved twice");
                    assert_ne!(a, ip("10.0.0.2"), "node address");
                    assert_eq!(s.pool.addrs[&a].holder, Some(h));
                }
            }
        }
        assert_eq!(seen.len(), 280);
        // Cursor: a reservation costs O(block), it continues where the last one stopped.
        assert_eq!(s.pool.cursors["10.0.0.1-10.0.1.255"], 281);
    }

    #[test]
    fn an_exhausted_pool_is_a_clear_error_and_a_short_pool_gives_what_it_has() {
        let mut s = state();
        // 10.0.0.1..=10.0.0.4 minus the node's 10.0.0.2: three addresses.
        assert_eq!(reserve(&mut s, H1, "10.0.0.4", 64, 1000).unwrap().len(), 3);
        let e = reserve(&mut s, H2, "10.0.0.4", 64, 1000).unwrap_err();
        assert!(matches!(e, CommandError::PoolExhausted { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("10.0.0.1-10.0.0.4") && msg.contains("enlarge"), "{msg}");
        assert!(reserve(&mut s, H1, "10.0.0.4", 0, 1000).is_err(), "empty block refused");
        assert!(reserve(&mut s, H1, "10.0.0.4", MAX_BLOCK + 1, 1000).is_err());
    }

    #[test]
    fn batches_record_bindings_and_refuse_what_the_holder_may_not_bind() {
        let mut s = state();
        let b1 = reserve(&mut s, H1, "10.0.0.9", 4, 1000).unwrap();
        let b2 = reserve(&mut s, H2, "10.0.0.9", 4, 1000).unwrap();
        let r = record(
            &mut s,
            H1,
            1000,
            vec![
                bind("02:00:00:00:00:01", b1[0], 1100),
                bind("02-00-00-00-00-02", b1[1], 1100),
                // H2's address: H1 may not hand it out.
                bind("02:00:00:00:00:03", b2[0], 1100),
                // Outside every block.
                bind("02:00:00:00:00:04", ip("10.0.0.200"), 1100),
            ],
        );
        assert_eq!(
            refused(r),
            vec![
                format!("{} 02:00:00:00:00:03", b2[0]),
                "10.0.0.200 02:00:00:00:00:04".to_string()
            ]
        );
        let (a, l) = s.pool.lease_of("02:00:00:00:00:02").expect("MAC index, normalised");
        assert_eq!((a, l.expires), (b1[1], 1100));
        // Another head renews a recorded binding (same MAC, same address): accepted.
        assert!(refused(record(&mut s, H2, 1050, vec![bind("02:00:00:00:00:01", b1[0], 1150)])).is_empty());
        assert_eq!(s.pool.lease_of("02:00:00:00:00:01").unwrap().1.expires, 1150);
        // ... but not for another MAC.
        assert_eq!(
            refused(record(&mut s, H1, 1050, vec![bind("02:00:00:00:00:09", b1[0], 1150)])).len(),
            1
        );
        // An unknown holder is told to reserve again.
        let e = record(&mut s, 999, 1000, vec![]).0.unwrap_err();
        assert!(e.to_string().contains("reserve a new block"), "{e}");
    }

    #[test]
    fn release_unbinds_at_once_and_the_address_returns_after_lease_and_grace() {
        let mut s = state();
        let b = reserve(&mut s, H1, "10.0.0.3", 2, 1000).unwrap();
        assert_eq!(b, [ip("10.0.0.1"), ip("10.0.0.3")]);
        let mac = "02:00:00:00:00:01";
        record(&mut s, H1, 1000, vec![bind(mac, b[0], 1100)]).0.unwrap();
        let rel = LeaseOp::Release {
            mac: mac.into(),
            ip: b[0],
        };
        assert!(refused(record(&mut s, H1, 1010, vec![rel.clone()])).is_empty());
        assert!(s.pool.lease_of(mac).is_none(), "no head answers the MAC from it");
        assert_eq!(refused(record(&mut s, H1, 1010, vec![rel])).len(), 1, "twice: refused");
        // Pool full: b[1] is H1's (fresh), b[0] waits until 1100 + L + GRACE.
        let hold = 1100 + L + GRACE_SECS;
        assert!(reserve(&mut s, H2, "10.0.0.3", 4, hold).is_err());
        assert_eq!(reserve(&mut s, H2, "10.0.0.3", 4, hold + 1).unwrap(), [b[0]]);
        assert!(s.pool.lease_of(mac).is_none());
    }

    #[test]
    fn expired_bindings_and_dead_holders_blocks_are_reclaimed_by_reservations() {
        let mut s = state();
        let b = reserve(&mut s, H1, "10.0.0.4", 3, 1000).unwrap();
        record(&mut s, H1, 1000, vec![bind("02:00:00:00:00:01", b[0], 1100)])
            .0
            .unwrap();
        // H1 stops sending: its never-bound addresses return after expiry + 2L + GRACE,
        // its recorded binding after e + L + GRACE (earlier here).
        let h1_gone = 1000 + HOLDER_TTL_SECS + 2 * L + GRACE_SECS;
        let e1_gone = 1100 + L + GRACE_SECS;
        assert!(reserve(&mut s, H2, "10.0.0.4", 3, e1_gone).is_err());
        assert_eq!(reserve(&mut s, H2, "10.0.0.4", 3, e1_gone + 1).unwrap(), [b[0]]);
        assert!(s.pool.lease_of("02:00:00:00:00:01").is_none(), "expired lease dropped");
        assert!(reserve(&mut s, H2, "10.0.0.4", 3, h1_gone).is_err());
        let mut back = reserve(&mut s, H2, "10.0.0.4", 3, h1_gone + 1).unwrap();
        back.sort();
        assert_eq!(back, [b[1], b[2]]);
    }

    #[test]
    fn declined_addresses_are_never_reused() {
        let mut s = state();
        let b = reserve(&mut s, H1, "10.0.0.3", 2, 1000).unwrap();
        // Declined before the binding was recorded (fresh from H1's block): accepted.
        let d = LeaseOp::Decline {
            mac: "02:00:00:00:00:01".into(),
            ip: b[0],
        };
        assert!(refused(record(&mut s, H1, 1000, vec![d])).is_empty());
        assert!(s.pool.addrs[&b[0]].declined);
        assert_eq!(
            refused(record(&mut s, H1, 1000, vec![bind("02:00:00:00:00:01", b[0], 1100)])).len(),
            1,
            "a declined address cannot be bound"
        );
        // Long after everything expired, only b[1] comes back.
        assert_eq!(reserve(&mut s, H2, "10.0.0.3", 4, 1_000_000).unwrap(), [b[1]]);
    }

    #[test]
    fn a_moving_mac_keeps_one_binding() {
        let mut s = state();
        let b1 = reserve(&mut s, H1, "10.0.0.9", 2, 1000).unwrap();
        let b2 = reserve(&mut s, H2, "10.0.0.9", 2, 1000).unwrap();
        let mac = "02:00:00:00:00:01";
        record(&mut s, H1, 1000, vec![bind(mac, b1[0], 1100)]).0.unwrap();
        record(&mut s, H2, 1001, vec![bind(mac, b2[0], 1101)]).0.unwrap();
        assert_eq!(s.pool.lease_of(mac).unwrap().0, b2[0]);
        assert!(s.pool.addrs[&b1[0]].lease.is_none());
        assert_eq!(s.pool.leases().count(), 1);
    }

    #[test]
    fn snapshot_round_trip_keeps_pools_and_rebuilds_the_mac_index() {
        let mut s = state();
        let b = reserve(&mut s, H1, "10.0.0.9", 3, 1000).unwrap();
        record(
            &mut s,
            H1,
            1000,
            vec![
                bind("02:00:00:00:00:01", b[0], 1100),
                LeaseOp::Decline {
                    mac: "02:00:00:00:00:02".into(),
                    ip: b[1],
                },
            ],
        )
        .0
        .unwrap();
        let json = serde_json::to_vec(&s).unwrap();
        let mut r: State = serde_json::from_slice(&json).unwrap();
        r.rebuild_index();
        assert_eq!(r, s);
        assert_eq!(r.pool, s.pool);
        assert_eq!(r.pool.lease_of("02:00:00:00:00:01").unwrap().0, b[0]);
        // The restored state decides exactly as the original.
        let (mut a, mut c) = (s.clone(), r);
        assert_eq!(
            reserve(&mut a, H2, "10.0.0.9", 3, 1000),
            reserve(&mut c, H2, "10.0.0.9", 3, 1000)
        );
        assert_eq!(a.pool, c.pool);
    }

    #[test]
    fn node_addresses_added_later_are_left_out_of_new_blocks() {
        let mut s = state();
        // A node added later with an address inside the pool is skipped by the next block.
        let conf = model::parse_nodes_conf(
            "nodes:\n  n2:\n    network devices:\n      default: {hwaddr: \"aa:bb:cc:dd:ee:02\", ipaddr: 10.0.0.1}\n",
        )
        .unwrap();
        assert!(s.apply(4, &req(Command::Import { conf })).0.is_ok());
        assert_eq!(reserve(&mut s, H1, "10.0.0.3", 4, 1000).unwrap(), [ip("10.0.0.3")]);
    }
}
