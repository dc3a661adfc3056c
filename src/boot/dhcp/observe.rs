//! What the server tells an operator about the requests it sees: without this a node
//! that gets no address is invisible on the head.
//!
//! - **Every dropped request is counted per reason** ([`Stats::dropped`]) and every answer
//!   and drop is logged at debug with the MAC, interface, message type and `giaddr`
//!   (`RUST_LOG=info,wulfpack::boot::dhcp=debug`).
//! - **Those lines are rate-limited** ([`LogLimiter`]): per outcome and MAC at most one
//!   line per [`LINE_EVERY`], the next one saying how many were suppressed, and at most
//!   [`LINE_BURST`] lines per [`LINE_EVERY`] in all, so a PXE storm or a flood of forged
//!   MACs cannot fill the log or the disk.
//! - **A summary at info** ([`DropSummary`]) every [`SUMMARY_EVERY`] while requests were
//!   dropped (`DHCP: 37 requests dropped in the last 60 s: 30 unknown MAC (no pool), 7
//!   no subnet for relay 10.9.0.1`) and nothing when none were: an idle head stays silent,
//!   a head that ignores a rack says so without debug logging.
//!
//! Everything here takes the time as an argument, so tests feed it instants instead of
//! sleeping; only the server reads the clock. Observing never changes an answer.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;

use super::handlers::{Destination, Skip, Verdict};
use super::server::Stats;
use super::MacAddr;

/// Per outcome and MAC, at most one debug line this often.
pub const LINE_EVERY: Duration = Duration::from_secs(10);
/// At most this many debug lines per [`LINE_EVERY`] over all outcomes and MACs
/// (10 lines a second at most, whatever arrives).
pub const LINE_BURST: u32 = 100;
/// How often the info summary of dropped requests is written (when there were some).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Distinct (outcome, MAC) pairs remembered by the limiter; beyond, a flood of new MACs
/// is counted in one "other lines suppressed" number instead of growing memory.
const MAX_LINE_KEYS: usize = 4096;
/// Distinct (reason, relay/interface) rows of the summary; beyond, rows fold into one.
const MAX_SUMMARY_ROWS: usize = 32;

/// The fields of a received datagram worth a log line, read from the raw bytes so that a
/// malformed packet still shows what it can (its MAC, if the header is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    pub mac: Option<MacAddr>,
    pub kind: Option<MessageType>,
    /// Set when relayed.
    pub giaddr: Option<Ipv4Addr>,
}

impl Seen {
    /// Read `chaddr`, `giaddr` and option 53 from a BOOTP/DHCP datagram; never panics,
    /// whatever the bytes.
    pub fn parse(b: &[u8]) -> Seen {
        let mut s = Seen::default();
        if let Some(g) = b.get(24..28) {
            let g = Ipv4Addr::new(g[0], g[1], g[2], g[3]);
            s.giaddr = (!g.is_unspecified()).then_some(g);
        }
        // htype 1 (Ethernet), hlen 6.
        if let (Some(1), Some(6), Some(m)) = (b.get(1), b.get(2), b.get(28..34)) {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(m);
            s.mac = Some(MacAddr(mac));
        }
        if b.get(236..240) == Some(&[99, 130, 83, 99]) {
            s.kind = message_type(&b[240..]);
        }
        s
    }
}

/// Option 53 from the option TLVs, if it is there and well-formed.
fn message_type(mut b: &[u8]) -> Option<MessageType> {
    while let Some((&code, rest)) = b.split_first() {
        match code {
            0 => b = rest,
            255 => return None,
            _ => {
                let (&len, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(len))?;
                if code == 53 {
                    return (len == 1).then(|| MessageType::from(value[0]));
                }
                b = &rest[usize::from(len)..];
            }
        }
    }
    None
}

/// What [`LogLimiter::admit`] lets through: write the line, and say what was held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admit {
    /// Lines of this key suppressed since its last line.
    pub suppressed: u64,
    /// Lines of other keys suppressed whose count no later line of theirs reported
    /// (global burst reached, or too many distinct keys).
    pub others: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Before this instant a line of this key is suppressed.
    quiet_until: Instant,
    suppressed: u64,
}

/// Rate limit for log lines: per key at most one line per `every`, and at most `burst`
/// lines per `every` window in all. Pure: the caller passes the time.
#[derive(Debug)]
pub struct LogLimiter<K> {
    every: Duration,
    burst: u32,
    max_keys: usize,
    slots: HashMap<K, Slot>,
    window_start: Option<Instant>,
    lines_in_window: u32,
    others: u64,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    pub fn new(every: Duration, burst: u32, max_keys: usize) -> Self {
        LogLimiter {
            every,
            burst,
            max_keys: max_keys.max(1),
            slots: HashMap::new(),
            window_start: None,
            lines_in_window: 0,
            others: 0,
        }
    }

    /// Whether a line for `key` may be written at `now`; `None` means suppressed (and
    /// counted, to be reported by a later admitted line).
    pub fn admit(&mut self, key: &K, now: Instant) -> Option<Admit> {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.every => {}
            _ => {
                self.window_start = Some(now);
                self.lines_in_window = 0;
            }
        }
        if let Some(slot) = self.slots.get_mut(key) {
            if now < slot.quiet_until || self.lines_in_window >= self.burst {
                slot.suppressed += 1;
                return None;
            }
            let suppressed = std::mem::take(&mut slot.suppressed);
            slot.quiet_until = now + self.every;
            return Some(self.line(suppressed));
        }
        if self.slots.len() >= self.max_keys {
            self.prune(now);
        }
        let over_burst = self.lines_in_window >= self.burst;
        if self.slots.len() >= self.max_keys {
            self.others += 1;
            return None;
        }
        if over_burst {
            // Remember it, so its next line (after the window) reports this one.
            self.slots.insert(
                key.clone(),
                Slot {
                    quiet_until: now,
                    suppressed: 1,
                },
            );
            return None;
        }
        self.slots.insert(
            key.clone(),
            Slot {
                quiet_until: now + self.every,
                suppressed: 0,
            },
        );
        Some(self.line(0))
    }

    fn line(&mut self, suppressed: u64) -> Admit {
        self.lines_in_window += 1;
        Admit {
            suppressed,
            others: std::mem::take(&mut self.others),
        }
    }

    /// Forget keys whose quiet time is over; what they had suppressed moves to `others`
    /// so no count disappears silently.
    fn prune(&mut self, now: Instant) {
        let mut freed = 0;
        self.slots.retain(|_, s| {
            let keep = now < s.quiet_until;
            if !keep {
                freed += s.suppressed;
            }
            keep
        });
        self.others += freed;
    }

    /// Keys currently remembered (bounded by `max_keys`).
    pub fn keys(&self) -> usize {
        self.slots.len()
    }
}

/// Counts of dropped requests per reason (and relay or interface, where that is what
/// is wrong) since the last summary. Pure: the caller passes the time.
#[derive(Debug)]
pub struct DropSummary {
    since: Instant,
    rows: HashMap<(Skip, Option<String>), u64>,
    total: u64,
}

impl DropSummary {
    pub fn new(now: Instant) -> Self {
        DropSummary {
            since: now,
            rows: HashMap::new(),
            total: 0,
        }
    }

    /// Count one dropped request; `detail` names the relay or interface for reasons
    /// that are about them (see [`detail`]).
    pub fn record(&mut self, reason: Skip, detail: Option<String>) {
        self.total += 1;
        let key = (reason, detail);
        if let Some(n) = self.rows.get_mut(&key) {
            *n += 1;
            return;
        }
        let key = if self.rows.len() >= MAX_SUMMARY_ROWS && key.1.is_some() {
            (reason, Some("(and others)".to_owned()))
        } else {
            key
        };
        *self.rows.entry(key).or_default() += 1;
    }

    /// The summary line of the drops since the last call (or creation), most frequent
    /// reason first, and start counting again; `None` when nothing was dropped.
    pub fn take(&mut self, now: Instant) -> Option<String> {
        let secs = now.saturating_duration_since(self.since).as_secs_f64().round();
        self.since = now;
        let total = std::mem::take(&mut self.total);
        if total == 0 {
            return None;
        }
        let mut rows: Vec<_> = self.rows.drain().collect();
        rows.sort_by(|((ra, da), na), ((rb, db), nb)| {
            nb.cmp(na)
                .then_with(|| ra.as_str().cmp(rb.as_str()))
                .then_with(|| da.cmp(db))
        });
        let rows: Vec<String> = rows
            .into_iter()
            .map(|((reason, detail), n)| match detail {
                Some(d) => format!("{n} {} {d}", reason.as_str()),
                None => format!("{n} {}", reason.as_str()),
            })
            .collect();
        let s = if total == 1 { "" } else { "s" };
        Some(format!(
            "DHCP: {total} request{s} dropped in the last {secs} s: {}",
            rows.join(", ")
        ))
    }
}

/// The relay or interface a drop reason is about, for the summary: the `giaddr` no
/// subnet accepts, or the interface without a subnet.
pub fn detail(reason: Skip, seen: &Seen, iface: &str) -> Option<String> {
    match reason {
        Skip::RelayNotAccepted => seen.giaddr.map(|g| g.to_string()),
        Skip::InterfaceNotServed => Some(iface.to_owned()),
        Skip::RateLimited => seen.mac.map(|m| m.to_string()),
        _ => None,
    }
}

/// The key of a debug line: what happened, to which MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    Dropped(Skip),
    Answered(MessageType),
}

/// The server's observer: counts into [`Stats`], writes the rate-limited debug lines and
/// keeps the summary. One per server, shared by its interfaces.
#[derive(Debug)]
pub struct Observer {
    lines: LogLimiter<(Outcome, Option<MacAddr>)>,
    summary: DropSummary,
}

impl Observer {
    pub fn new(now: Instant) -> Self {
        Observer {
            lines: LogLimiter::new(LINE_EVERY, LINE_BURST, MAX_LINE_KEYS),
            summary: DropSummary::new(now),
        }
    }

    /// Count and log the outcome of one request (`bytes` received on `iface`). Replies
    /// are counted by the server when sent; drops here.
    pub fn observe(&mut self, stats: &Stats, iface: &str, bytes: &[u8], verdict: &Verdict, now: Instant) {
        let seen = Seen::parse(bytes);
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        match verdict {
            Verdict::Skip(reason) => {
                stats.count_drop(*reason);
                // A backup standing by for its rack's primary is the normal case, not a
                // drop to report every minute (counted, and logged at debug).
                if *reason != Skip::NotOurTurn {
                    self.summary.record(*reason, detail(*reason, &seen, iface));
                }
                if !debug {
                    return;
                }
                let Some(a) = self.lines.admit(&(Outcome::Dropped(*reason), seen.mac), now) else {
                    return;
                };
                tracing::debug!(
                    reason = reason.as_str(),
                    mac = %Shown(seen.mac),
                    %iface,
                    kind = %Shown(seen.kind.map(Kind)),
                    giaddr = %Shown(seen.giaddr),
                    "DHCP request dropped{}",
                    Suppressed(a)
                );
            }
            Verdict::Reply(r) => {
                if !debug {
                    return;
                }
                let Some(reply) = r.msg.opts().msg_type() else {
                    return;
                };
                let Some(a) = self.lines.admit(&(Outcome::Answered(reply), seen.mac), now) else {
                    return;
                };
                let given = if r.msg.yiaddr().is_unspecified() {
                    None
                } else {
                    Some(r.msg.yiaddr())
                };
                tracing::debug!(
                    mac = %Shown(seen.mac),
                    %iface,
                    kind = %Shown(seen.kind.map(Kind)),
                    reply = %Kind(reply),
                    addr = %Shown(given),
                    to = %To(r.dest),
                    "DHCP request answered{}",
                    Suppressed(a)
                );
            }
        }
    }

    /// The summary line if requests were dropped since the last call (see [`DropSummary::take`]).
    pub fn summary(&mut self, now: Instant) -> Option<String> {
        self.summary.take(now)
    }
}

/// `-` for a missing field.
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A message type as RFC 2131 spells it (DISCOVER, OFFER, ...).
struct Kind(MessageType);

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            MessageType::Unknown(n) => write!(f, "type {n}"),
            k => f.write_str(&format!("{k:?}").to_uppercase()),
        }
    }
}

struct To(Destination);

impl std::fmt::Display for To {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Destination::Relay(ip) => write!(f, "relay {ip}"),
            Destination::Client(ip) => write!(f, "client {ip}"),
            Destination::Broadcast => f.write_str("broadcast"),
        }
    }
}

/// ` (K more suppressed)`, and other keys' suppressed lines, when there were any.
struct Suppressed(Admit);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Admit { suppressed, others } = self.0;
        if suppressed > 0 {
            write!(f, " ({suppressed} more like this suppressed)")?;
        }
        if others > 0 {
            write!(f, " ({others} other DHCP debug lines suppressed)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_key_per_period_then_the_suppressed_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(10 * S, 100, 16);
        assert_eq!(
            l.admit(&"a", t0),
            Some(Admit {
                suppressed: 0,
                others: 0
            })
        );
        // A flood of the same key within the period: all suppressed.
        for i in 1..=9 {
            assert_eq!(l.admit(&"a", t0 + i * S), None, "second {i}");
        }
        // Another key is not held back by the first.
        assert_eq!(
            l.admit(&"b", t0 + 2 * S),
            Some(Admit {
                suppressed: 0,
                others: 0
            })
        );
        // After the period the next line reports the 9 held back, then counting restarts.
        assert_eq!(
            l.admit(&"a", t0 + 10 * S),
            Some(Admit {
                suppressed: 9,
                others: 0
            })
        );
        assert_eq!(l.admit(&"a", t0 + 11 * S), None);
        assert_eq!(
            l.admit(&"a", t0 + 20 * S),
            Some(Admit {
                suppressed: 1,
                others: 0
            })
        );
        assert_eq!(
            l.admit(&"a", t0 + 31 * S),
            Some(Admit {
                suppressed: 0,
                others: 0
            })
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_is_capped_per_window() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(10 * S, 3, 1000);
        let admitted = (0..50u32).filter(|k| l.admit(k, t0).is_some()).count();
        assert_eq!(admitted, 3, "the burst caps lines whatever the keys");
        // In the next window a held-back key gets its line and reports its suppressed one.
        assert_eq!(
            l.admit(&7, t0 + 10 * S),
            Some(Admit {
                suppressed: 1,
                others: 0
            })
        );
    }

    #[test]
    fn memory_is_bounded_and_forgotten_counts_are_reported() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(10 * S, 1000, 4);
        for k in 0..4u32 {
            assert!(l.admit(&k, t0).is_some());
        }
        assert_eq!(l.admit(&0, t0 + S), None); // key 0 suppressed once
                                               // A fifth key while all four are quiet: no room, counted as "others".
        assert_eq!(l.admit(&4, t0 + 2 * S), None);
        assert_eq!(l.keys(), 4);
        // After the period the old keys are pruned; key 0's suppressed line and the
        // refused key 4 are reported by the next line.
        assert_eq!(
            l.admit(&5, t0 + 10 * S),
            Some(Admit {
                suppressed: 0,
                others: 2
            })
        );
        assert!(l.keys() <= 4);
    }

    #[test]
    fn summary_counts_per_reason_most_frequent_first_and_is_silent_when_idle() {
        let t0 = Instant::now();
        let mut s = DropSummary::new(t0);
        assert_eq!(s.take(t0 + 60 * S), None, "an idle head logs nothing");
        for _ in 0..30 {
            s.record(Skip::UnknownClient, None);
        }
        for _ in 0..7 {
            s.record(Skip::RelayNotAccepted, Some("10.9.0.1".into()));
        }
        assert_eq!(
            s.take(t0 + 120 * S).as_deref(),
            Some(
                "DHCP: 37 requests dropped in the last 60 s: 30 unknown MAC (no pool), 7 no subnet for relay 10.9.0.1"
            )
        );
        // Counting starts again.
        assert_eq!(s.take(t0 + 180 * S), None);
        s.record(Skip::InterfaceNotServed, Some("br9".into()));
        assert_eq!(
            s.take(t0 + 240 * S).as_deref(),
            Some("DHCP: 1 request dropped in the last 60 s: 1 no subnet for interface br9")
        );
    }

    #[test]
    fn summary_rows_are_bounded() {
        let t0 = Instant::now();
        let mut s = DropSummary::new(t0);
        for i in 0..1000u32 {
            s.record(Skip::RelayNotAccepted, Some(Ipv4Addr::from(i).to_string()));
        }
        let line = s.take(t0 + 60 * S).unwrap();
        assert!(line.starts_with("DHCP: 1000 requests dropped"), "{line}");
        assert!(line.contains("no subnet for relay (and others)"), "{line}");
        assert!(line.matches(", ").count() <= MAX_SUMMARY_ROWS, "{line}");
    }

    #[test]
    fn seen_reads_what_a_broken_packet_still_has() {
        assert_eq!(Seen::parse(&[]), Seen::default());
        assert_eq!(Seen::parse(&[0xff; 10]), Seen::default());
        let mut b = vec![0u8; 300];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[24..28].copy_from_slice(&[10, 9, 0, 1]);
        b[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b[240..246].copy_from_slice(&[0, 12, 1, b'x', 53, 1]);
        b[246] = 3;
        b[247] = 255;
        let s = Seen::parse(&b);
        assert_eq!(s.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
        assert_eq!(s.giaddr, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(s.kind, Some(MessageType::Request));
        // Option 53 running off the end: no type, no panic.
        assert_eq!(Seen::parse(&b[..245]).kind, None);
        assert_eq!(Seen::parse(&b[..245]).mac, s.mac);
    }

    #[test]
    fn kinds_print_as_rfc_2131_names() {
        assert_eq!(Kind(MessageType::Discover).to_string(), "DISCOVER");
        assert_eq!(Kind(MessageType::Unknown(99)).to_string(), "type 99");
    }
}
