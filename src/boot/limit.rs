//! Transfers in flight per client address, for TFTP and HTTP boot: one client (a ROM in
//! a retry loop, a script fetching everything at once, a hostile host) cannot hold every
//! transfer thread or connection of a head while the rest of the rack waits.
//!
//! A booting node fetches one file at a time (PXE firmware: one TFTP transfer; iPXE:
//! the kernel, then the image, then the overlays; `wwclient`: one runtime overlay), so
//! the limits (`boot.tftp.max_transfers_per_client`, `boot.http.max_transfers_per_client`)
//! sit far above what a node does and far below what a flood needs. A request over the
//! limit is refused at once with a clear answer (TFTP: an ERROR packet; HTTP: 503 with
//! `Retry-After`), never queued, and leaves a trace: a warning at most once per client
//! per [`LOG_EVERY`] carrying how many were refused since the last line, and
//! [`PerClient::refused`] in all.
//!
//! Memory is bounded by the transfers in flight: a client's entry exists only while it
//! has one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often at most a client's refusals are logged (with their count).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Transfers in flight per client address, at most `max` each.
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    /// The protocol, for the log line (`TFTP`, `HTTP boot`).
    what: &'static str,
    /// The setting that raises the limit, for the log line.
    setting: &'static str,
    in_flight: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    log: crate::logging::EveryPer<IpAddr>,
}

/// One transfer's place; the client's count goes down when it is dropped.
#[derive(Debug)]
pub struct Slot {
    limit: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.limit.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    pub fn new(max: usize, what: &'static str, setting: &'static str) -> Arc<PerClient> {
        Arc::new(PerClient {
            max,
            what,
            setting,
            in_flight: Mutex::default(),
            refused: AtomicU64::new(0),
            log: crate::logging::EveryPer::new(LOG_EVERY),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more transfer of `ip`, or None (counted and logged) when it has
    /// `max` in flight already.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical(ip);
        {
            let mut m = self.lock();
            let n = m.entry(ip).or_insert(0);
            if *n < self.max {
                *n += 1;
                return Some(Slot {
                    limit: self.clone(),
                    ip,
                });
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.log.tick(&ip) {
            tracing::warn!(
                client = %ip,
                limit = self.max,
                refused_since_last_report = n,
                "{}: refused a transfer: {} already in flight from this client (raise {} if one node really needs more)",
                self.what,
                self.max,
                self.setting
            );
        }
        None
    }

    /// Transfers of `ip` in flight now.
    pub fn in_flight(&self, ip: IpAddr) -> usize {
        self.lock().get(&canonical(ip)).copied().unwrap_or(0)
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// An IPv4 client seen on a dual-stack socket (`::ffff:a.b.c.d`) is that IPv4 client.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_max_places_and_others_are_not_affected() {
        let l = PerClient::new(2, "test", "test.max");
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert!(l.acquire(a).is_none(), "a third one of the same client");
        assert!(
            l.acquire("::ffff:10.0.0.1".parse().unwrap()).is_none(),
            "the same client, v4-mapped"
        );
        assert_eq!(l.refused(), 2);
        let _b1 = l.acquire(b).expect("another client is served");
        drop(s1);
        assert_eq!(l.in_flight(a), 1);
        let _s3 = l.acquire(a).expect("a place again once one ended");
    }

    #[test]
    fn entries_exist_only_while_transfers_do() {
        let l = PerClient::new(1, "test", "test.max");
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(l.acquire(ip).unwrap());
        }
        assert!(l.lock().is_empty());
    }
}
