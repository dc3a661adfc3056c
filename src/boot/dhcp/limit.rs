//! Requests per MAC: a token bucket for each client hardware address, so that one
//! client flooding a rack (a broken ROM in a retry loop, a hostile host) cannot take the
//! server's time from the rack's other nodes. A real PXE client sends a few requests
//! per second at most (DISCOVER and REQUEST, retransmitted about once a second; iPXE
//! does the same again): the default allows 10 per second with bursts of 30, far above
//! that and far below a flood. What exceeds it is dropped and counted as
//! `Skip::RateLimited` (in the per-minute drop summary, with the MAC).
//!
//! One limiter per interface loop, so no lock is shared. Bounded memory: at most
//! [`MAX_TRACKED`] MACs are tracked; when full, buckets that have refilled (idle
//! clients) are forgotten, and a MAC that still finds no room is admitted untracked (a
//! flood of distinct MACs is not what this limit is for).

use std::collections::HashMap;
use std::time::Instant;

/// Most MACs tracked at once (about 2.5 MB).
pub const MAX_TRACKED: usize = 65_536;

/// Requests allowed per MAC: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_sec: 10.0,
            burst: 30.0,
        }
    }
}

#[derive(Debug)]
pub struct MacLimiter {
    limit: RateLimit,
    buckets: HashMap<[u8; 6], (f64, Instant)>,
}

impl MacLimiter {
    pub fn new(limit: RateLimit) -> MacLimiter {
        MacLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Whether a request from `mac` at `now` is within the limit (and count it).
    pub fn admit(&mut self, mac: [u8; 6], now: Instant) -> bool {
        let RateLimit { per_sec, burst } = self.limit;
        if !self.buckets.contains_key(&mac) && self.buckets.len() >= MAX_TRACKED {
            self.buckets
                .retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * per_sec < burst);
            if self.buckets.len() >= MAX_TRACKED {
                return true;
            }
        }
        let (tokens, last) = self.buckets.entry(mac).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_sec).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The client hardware address of a raw BOOTP/DHCP datagram (Ethernet, 6 bytes), if it
/// has one.
pub fn chaddr(bytes: &[u8]) -> Option<[u8; 6]> {
    if bytes.len() < 34 || bytes[1] != 1 || bytes[2] != 6 {
        return None;
    }
    bytes[28..34].try_into().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = MacLimiter::new(RateLimit {
            per_sec: 10.0,
            burst: 30.0,
        });
        let t0 = Instant::now();
        let a = [2, 0, 0, 0, 0, 1];
        let admitted = (0..100).filter(|_| l.admit(a, t0)).count();
        assert_eq!(admitted, 30, "the burst, all at once");
        // One second later: ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| l.admit(a, t1)).count(), 10);
        // Another MAC is not affected by the first one's flood.
        assert!(l.admit([2, 0, 0, 0, 0, 2], t1));
        // A client at 2 requests per second is never limited.
        let b = [2, 0, 0, 0, 0, 3];
        for i in 0..200 {
            assert!(l.admit(b, t0 + Duration::from_millis(500 * i)));
        }
    }

    #[test]
    fn memory_is_bounded_and_idle_clients_are_forgotten() {
        let mut l = MacLimiter::new(RateLimit::default());
        let t0 = Instant::now();
        let mac = |i: usize| {
            let b = (i as u32).to_be_bytes();
            [2, 0, b[0], b[1], b[2], b[3]]
        };
        for i in 0..MAX_TRACKED {
            assert!(l.admit(mac(i), t0));
        }
        assert_eq!(l.tracked(), MAX_TRACKED);
        // Full, nothing idle yet: a new MAC is admitted untracked.
        assert!(l.admit(mac(MAX_TRACKED + 1), t0));
        assert_eq!(l.tracked(), MAX_TRACKED);
        // Later the earlier ones have refilled and are forgotten to make room.
        assert!(l.admit(mac(MAX_TRACKED + 2), t0 + Duration::from_secs(5)));
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn chaddr_of_ethernet_requests_only() {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0, 0, 1]);
        assert_eq!(chaddr(&b), Some([0xaa, 0xbb, 0xcc, 0, 0, 1]));
        b[2] = 16;
        assert_eq!(chaddr(&b), None);
        assert_eq!(chaddr(&b[..20]), None);
    }
}
