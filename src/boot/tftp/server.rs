//! The TFTP protocol, read side only: RRQ → optional OACK → DATA/ACK in windows
//! (RFC 1350, 2347 options, 2348 `blksize`, 2349 `timeout`/`tsize`, 7440
//! `windowsize`); every WRQ is refused.
//!
//! Why our own loop rather than async-tftp's server (which this module replaced,
//! issue 11): TFTP from PXE firmware and curl is lock-step — one block, then wait for
//! its ACK — so a transfer's speed is the round trip, and everything the server does
//! between an ACK arriving and the next block leaving is on that path. async-tftp ran
//! each block through an executor and a reactor shared with a helper thread: a
//! `recvfrom` that would block, an `epoll_ctl` to re-arm, a timer armed and disarmed,
//! `epoll_wait`, often a futex hand-off to the `async-io` thread, and a `read` into a
//! fresh buffer — 53–58 MB/s where tftpd-hpa made 66–69. Here:
//!
//! - **One thread per transfer, blocking on its own connected socket.** The ACK wakes
//!   the thread straight out of `recv`; per block there is one `sendmsg` and one
//!   `recv`, nothing else (no lock, no timer: the socket's receive timeout is set once).
//!   Threads are few and cheap here (PXE ROMs fetch one ~1 MB binary each; 256 KiB
//!   stacks), and their number is capped ([`Limits::max_transfers`]): beyond it a
//!   request is dropped and the firmware retransmits it. One client address holds at
//!   most [`Limits::max_per_client`] of them (beyond: an ERROR packet, so one client
//!   cannot take the rack's threads), and a transfer whose client acknowledges nothing
//!   for [`Limits::idle_timeout`] ends, whatever retransmit timeout it asked for.
//! - **No copy of the data in user space.** A block is sent as two I/O vectors, the
//!   4-byte header and the bytes where they already are: the in-memory copy of a small
//!   file ([`super::root::Source::Memory`], every iPXE binary), or, for a large file, a
//!   window's worth read with one `pread` while the previous window waits for its ACK.
//! - **Windows** (RFC 7440) up to `max_window_size`: the client acknowledges the last
//!   block of a window (or the last it got in order) and the next window starts after
//!   it. Duplicate and stale ACKs are ignored, never answered (the "Sorcerer's
//!   Apprentice" bug), and the window is sent again only on a timeout.

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::root::{Root, Source};

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// RFC 1350's block size, when the client asks for none.
const DEFAULT_BLKSIZE: usize = 512;
/// How often a blocked thread looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(250);
/// Stack of a transfer thread: the loop holds little; buffers are on the heap.
const TRANSFER_STACK: usize = 256 * 1024;

/// The TFTP error codes we send (RFC 1350 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPacket {
    pub code: u16,
    pub msg: String,
}

impl ErrorPacket {
    pub fn new(code: u16, msg: impl Into<String>) -> ErrorPacket {
        ErrorPacket { code, msg: msg.into() }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(5 + self.msg.len());
        p.extend_from_slice(&ERROR.to_be_bytes());
        p.extend_from_slice(&self.code.to_be_bytes());
        p.extend_from_slice(self.msg.as_bytes());
        p.push(0);
        p
    }
}

/// What the server grants at most, and its timing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_block_size: u16,
    pub max_window_size: u16,
    /// Retransmit timeout when the client asks for none.
    pub timeout: Duration,
    pub max_send_retries: u32,
    /// Transfers at once; requests beyond are dropped (the client retransmits).
    pub max_transfers: usize,
    /// Transfers at once from one client address; requests beyond are refused with an
    /// ERROR packet ([`crate::boot::limit`]).
    pub max_per_client: usize,
    /// A transfer whose client acknowledges nothing for this long ends, whatever
    /// retransmit timeout the client asked for (up to 255 s, RFC 2349).
    pub idle_timeout: Duration,
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Read {
        file: String,
        mode: String,
        opts: Vec<(String, String)>,
    },
    Write {
        file: String,
    },
}

fn nul_str(b: &[u8]) -> Option<(&str, &[u8])> {
    let end = b.iter().position(|c| *c == 0)?;
    Some((std::str::from_utf8(&b[..end]).ok()?, &b[end + 1..]))
}

/// Parse an RRQ or WRQ; anything else (or malformed) is None.
pub(crate) fn parse_request(p: &[u8]) -> Option<Request> {
    if p.len() < 2 {
        return None;
    }
    let op = u16::from_be_bytes([p[0], p[1]]);
    let (file, rest) = nul_str(&p[2..])?;
    let (mode, mut rest) = nul_str(rest)?;
    match op {
        RRQ => {
            let mut opts = Vec::new();
            while !rest.is_empty() {
                let Some((k, r)) = nul_str(rest) else { break };
                let Some((v, r)) = nul_str(r) else { break };
                opts.push((k.to_ascii_lowercase(), v.to_owned()));
                rest = r;
            }
            Some(Request::Read {
                file: file.to_owned(),
                mode: mode.to_ascii_lowercase(),
                opts,
            })
        }
        WRQ => Some(Request::Write { file: file.to_owned() }),
        _ => None,
    }
}

/// Options granted for one transfer (None: not asked for, or not acceptable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Granted {
    pub blksize: Option<u16>,
    pub timeout: Option<u8>,
    pub tsize: Option<u64>,
    pub windowsize: Option<u16>,
}

impl Granted {
    /// Grant what the client asked, within the limits (RFC 2347: options the server
    /// does not accept are left out of the OACK, not refused).
    pub(crate) fn negotiate(opts: &[(String, String)], limits: &Limits, size: u64) -> Granted {
        let mut g = Granted::default();
        for (k, v) in opts {
            match k.as_str() {
                "blksize" => {
                    if let Ok(b) = v.parse::<u16>() {
                        if (8..=65464).contains(&b) {
                            g.blksize = Some(b.min(limits.max_block_size));
                        }
                    }
                }
                "timeout" => g.timeout = v.parse::<u8>().ok().filter(|t| *t >= 1),
                "tsize" if v == "0" => g.tsize = Some(size),
                "windowsize" => {
                    if let Ok(w) = v.parse::<u16>() {
                        if w >= 1 {
                            g.windowsize = Some(w.min(limits.max_window_size));
                        }
                    }
                }
                _ => {}
            }
        }
        g
    }

    fn is_empty(&self) -> bool {
        *self == Granted::default()
    }

    fn oack(&self) -> Vec<u8> {
        let mut p = OACK.to_be_bytes().to_vec();
        let mut put = |k: &str, v: String| {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        };
        if let Some(b) = self.blksize {
            put("blksize", b.to_string());
        }
        if let Some(t) = self.timeout {
            put("timeout", t.to_string());
        }
        if let Some(s) = self.tsize {
            put("tsize", s.to_string());
        }
        if let Some(w) = self.windowsize {
            put("windowsize", w.to_string());
        }
        p
    }
}

/// Serve on `sock` until `stop` is set (checked every [`STOP_POLL`]). Returns only on
/// a socket error that retrying cannot fix, or when stopped.
pub(crate) fn serve(
    sock: UdpSocket,
    root: Root,
    limits: Limits,
    allow: Option<Arc<crate::boot::allow::Allow>>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    sock.set_read_timeout(Some(STOP_POLL))?;
    let local_ip = sock.local_addr()?.ip();
    let root = Arc::new(Mutex::new(root));
    let active: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let per_client =
        crate::boot::limit::PerClient::new(limits.max_per_client, "TFTP", "boot.tftp.max_transfers_per_client");
    let mut last_busy_warning: Option<Instant> = None;
    let mut buf = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            // An ICMP error for an earlier datagram, a signal: not the socket's end.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        // Nothing for clients outside the racks (no error packet either: no hint); this
        // host itself (its own address on the rack) is a client like loopback.
        if peer.ip() != local_ip && allow.as_ref().is_some_and(|a| !a.check(peer.ip(), "TFTP")) {
            continue;
        }
        match parse_request(&buf[..n]) {
            None => {} // not a request (a stray ACK or DATA): RFC 1350 ignores it
            Some(Request::Write { file }) => {
                tracing::info!(client = %peer, file = %file, "TFTP write refused (read-only server)");
                reply_error(local_ip, peer, &super::Refusal::ReadOnly.to_error());
            }
            Some(Request::Read { file, mode, opts }) => {
                let mut a = active.lock().unwrap_or_else(|p| p.into_inner());
                if a.contains(&peer) {
                    continue; // a retransmitted RRQ of a transfer already running
                }
                if a.len() >= limits.max_transfers {
                    if last_busy_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(
                            transfers = a.len(),
                            "TFTP: at boot.tftp.max_transfers; dropping new requests (clients retransmit)"
                        );
                        last_busy_warning = Some(Instant::now());
                    }
                    continue;
                }
                // One client cannot hold the threads the rack needs: an answer the
                // firmware shows (code 0, RFC 1350's "see message"), not a silent drop.
                let Some(slot) = per_client.acquire(peer.ip()) else {
                    drop(a);
                    reply_error(
                        local_ip,
                        peer,
                        &ErrorPacket::new(
                            0,
                            format!(
                                "too many transfers from this client (at most {} at once); retry when one ends",
                                limits.max_per_client
                            ),
                        ),
                    );
                    continue;
                };
                a.insert(peer);
                drop(a);
                let t = Transfer {
                    peer,
                    local_ip,
                    file,
                    mode,
                    opts,
                    root: root.clone(),
                    limits,
                    stop: stop.clone(),
                };
                let done = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("tftp-xfer".into())
                    .stack_size(TRANSFER_STACK)
                    .spawn(move || {
                        t.run();
                        done.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                        drop(slot);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(client = %peer, "TFTP: cannot start a transfer thread: {e}");
                    active.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer);
                }
            }
        }
    }
    Ok(())
}

/// An error answer from a fresh socket (a new transfer ID, as a transfer would have).
fn reply_error(local_ip: IpAddr, peer: SocketAddr, e: &ErrorPacket) {
    if let Ok(s) = UdpSocket::bind((local_ip, 0)) {
        let _ = s.send_to(&e.encode(), peer);
    }
}

struct Transfer {
    peer: SocketAddr,
    local_ip: IpAddr,
    file: String,
    mode: String,
    opts: Vec<(String, String)>,
    root: Arc<Mutex<Root>>,
    limits: Limits,
    stop: Arc<AtomicBool>,
}

/// How waiting for an acknowledgement ended.
#[derive(Debug, PartialEq, Eq)]
enum Waited {
    /// Blocks before this index are acknowledged.
    Acked(u64),
    Timeout,
    /// The client sent an error, went away, or the server is stopping.
    Over(String),
}

impl Transfer {
    fn run(self) {
        let started = Instant::now();
        let sock = match UdpSocket::bind((self.local_ip, 0)).and_then(|s| s.connect(self.peer).map(|()| s)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %self.peer, "TFTP: cannot open a transfer socket: {e}");
                return;
            }
        };
        let send_error = |e: ErrorPacket| {
            let _ = sock.send(&e.encode());
        };
        if self.mode == "mail" {
            return send_error(ErrorPacket::new(4, "mail mode is not supported"));
        }
        let opened = self.root.lock().unwrap_or_else(|p| p.into_inner()).open(&self.file);
        let (source, size) = match opened {
            Ok(x) => x,
            Err(r) => {
                tracing::info!(client = %self.peer, file = %self.file, "TFTP refused: {r}");
                return send_error(r.to_error());
            }
        };
        let granted = Granted::negotiate(&self.opts, &self.limits, size);
        let timeout = granted
            .timeout
            .map(|t| Duration::from_secs(u64::from(t)))
            .unwrap_or(self.limits.timeout);
        if let Err(e) = sock.set_read_timeout(Some(timeout.min(STOP_POLL))) {
            tracing::warn!(client = %self.peer, "TFTP: socket timeout: {e}");
            return;
        }
        let blksize = granted.blksize.map_or(DEFAULT_BLKSIZE, usize::from);
        let window = u64::from(granted.windowsize.unwrap_or(1));
        let mut blocks = Blocks::new(source, size, blksize, window);
        let mut w = Wire {
            sock: &sock,
            timeout,
            idle: self.limits.idle_timeout,
            idle_deadline: started + self.limits.idle_timeout,
            stop: &self.stop,
            buf: [0u8; 516],
        };
        let idle_error = || {
            ErrorPacket::new(
                0,
                format!(
                    "no acknowledgement for {} s; transfer abandoned",
                    self.limits.idle_timeout.as_secs_f64()
                ),
            )
        };

        // RFC 2347: options granted → OACK, acknowledged with block 0.
        if !granted.is_empty() {
            let oack = granted.oack();
            let mut acked = false;
            for _ in 0..=self.limits.max_send_retries {
                if let Err(e) = sock.send(&oack) {
                    return self.log_end(&format!("send: {e}"), 0, started);
                }
                match w.wait_ack(u64::MAX, 1) {
                    Waited::Acked(_) => {
                        acked = true;
                        break;
                    }
                    Waited::Timeout if w.is_idle() => {
                        send_error(idle_error());
                        return self.log_end("idle (boot.tftp.idle_timeout_ms)", 0, started);
                    }
                    Waited::Timeout => continue,
                    Waited::Over(why) => return self.log_end(&why, 0, started),
                }
            }
            if !acked {
                return self.log_end("no ACK of the options", 0, started);
            }
        }

        let count = blocks.count;
        let mut base = 0u64; // first block not acknowledged
        let mut retries = 0u32;
        while base < count {
            let end = (base + window).min(count);
            for i in base..end {
                let sent = blocks.block(i).and_then(|data| {
                    let head = [0, DATA as u8, wire(i).to_be_bytes()[0], wire(i).to_be_bytes()[1]];
                    rustix::net::sendmsg(
                        &sock,
                        &[IoSlice::new(&head), IoSlice::new(data)],
                        &mut Default::default(),
                        rustix::net::SendFlags::empty(),
                    )
                    .map_err(io::Error::from)
                });
                if let Err(e) = sent {
                    return self.log_end(&format!("sending block {}: {e}", i + 1), base, started);
                }
            }
            // Read the next window from the file while the client answers.
            blocks.prefetch(end);
            match w.wait_ack(base, end - base) {
                Waited::Acked(next) => {
                    base = next;
                    retries = 0;
                }
                Waited::Timeout if w.is_idle() => {
                    send_error(idle_error());
                    return self.log_end("idle (boot.tftp.idle_timeout_ms)", base, started);
                }
                Waited::Timeout => {
                    retries += 1;
                    if retries > self.limits.max_send_retries {
                        send_error(ErrorPacket::new(0, "timed out waiting for an ACK"));
                        return self.log_end("no ACK after the retries", base, started);
                    }
                }
                Waited::Over(why) => return self.log_end(&why, base, started),
            }
        }
        let secs = started.elapsed().as_secs_f64();
        tracing::debug!(
            client = %self.peer,
            file = %self.file,
            size,
            blksize,
            window,
            mb_per_s = size as f64 / secs.max(1e-9) / 1e6,
            "TFTP sent"
        );
    }

    fn log_end(&self, why: &str, acked: u64, started: Instant) {
        tracing::info!(
            client = %self.peer,
            file = %self.file,
            blocks_acked = acked,
            secs = started.elapsed().as_secs_f64(),
            "TFTP transfer ended: {why}"
        );
    }
}

/// The block number on the wire of block index `i` (the first data block is 1; the
/// number wraps to 0 after 65535, as tftp-hpa, curl and iPXE expect).
fn wire(i: u64) -> u16 {
    (i + 1) as u16
}

/// One transfer's socket and its wait for acknowledgements.
struct Wire<'a> {
    sock: &'a UdpSocket,
    timeout: Duration,
    /// How long the client may acknowledge nothing, and until when it may now.
    idle: Duration,
    idle_deadline: Instant,
    stop: &'a AtomicBool,
    buf: [u8; 516],
}

impl Wire<'_> {
    /// The client has acknowledged nothing for the idle timeout.
    fn is_idle(&self) -> bool {
        Instant::now() >= self.idle_deadline
    }

    /// Wait for an ACK of one of the `len` blocks from index `base` (`base` =
    /// `u64::MAX`: the OACK, acknowledged as block 0). Other packets, duplicate and
    /// stale ACKs are ignored until the timeout.
    fn wait_ack(&mut self, base: u64, len: u64) -> Waited {
        let first = if base == u64::MAX { 0 } else { wire(base) };
        let deadline = (Instant::now() + self.timeout).min(self.idle_deadline);
        // Bounded: at most one packet per iteration, and the deadline ends it.
        for _ in 0..1_000_000 {
            if self.stop.load(Ordering::Relaxed) {
                return Waited::Over("server stopping".into());
            }
            match self.sock.recv(&mut self.buf) {
                Ok(n) if n >= 4 => {
                    let op = u16::from_be_bytes([self.buf[0], self.buf[1]]);
                    let num = u16::from_be_bytes([self.buf[2], self.buf[3]]);
                    if op == ACK {
                        let off = u64::from(num.wrapping_sub(first));
                        if off < len {
                            self.idle_deadline = Instant::now() + self.idle;
                            return Waited::Acked(if base == u64::MAX { 0 } else { base + off + 1 });
                        }
                    } else if op == ERROR {
                        let msg = nul_str(&self.buf[4..n]).map(|(m, _)| m).unwrap_or("");
                        return Waited::Over(format!("the client sent error {num}: {msg}"));
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP port unreachable on the connected socket: the client is gone.
                Err(e) => return Waited::Over(format!("receive: {e}")),
            }
            if Instant::now() >= deadline {
                return Waited::Timeout;
            }
        }
        Waited::Timeout
    }
}

/// The blocks of one file: slices of memory, or of buffers read from the file a
/// window at a time (the current window and the next, read ahead).
struct Blocks {
    source: Source,
    size: u64,
    blksize: usize,
    /// Number of blocks; the last is shorter than `blksize`, possibly empty.
    count: u64,
    /// Blocks per read from a file.
    per_read: u64,
    cur: Chunk,
    ahead: Chunk,
}

#[derive(Default)]
struct Chunk {
    first: u64,
    blocks: u64,
    data: Vec<u8>,
}

impl Chunk {
    fn holds(&self, i: u64) -> bool {
        i >= self.first && i < self.first + self.blocks
    }
}

impl Blocks {
    fn new(source: Source, size: u64, blksize: usize, window: u64) -> Blocks {
        Blocks {
            source,
            size,
            blksize,
            count: size / blksize as u64 + 1,
            // At least 64 KiB per read, so windowsize 1 does not mean a read per block.
            per_read: window.max((64 * 1024 / blksize as u64).max(1)),
            cur: Chunk::default(),
            ahead: Chunk::default(),
        }
    }

    fn range(&self, i: u64) -> (u64, u64) {
        let start = (i * self.blksize as u64).min(self.size);
        (start, (start + self.blksize as u64).min(self.size))
    }

    fn fill(&self, c: &mut Chunk, first: u64) -> io::Result<()> {
        let Source::File(f) = &self.source else { return Ok(()) };
        let blocks = self.per_read.min(self.count.saturating_sub(first));
        let (start, _) = self.range(first);
        let (_, end) = self.range(first + blocks.max(1) - 1);
        c.data.resize((end - start) as usize, 0);
        let mut got = 0;
        while got < c.data.len() {
            match f.read_at(&mut c.data[got..], start + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while it was being sent",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        c.first = first;
        c.blocks = blocks;
        Ok(())
    }

    /// The bytes of block `i`.
    fn block(&mut self, i: u64) -> io::Result<&[u8]> {
        let (start, end) = self.range(i);
        if let Source::Memory(m) = &self.source {
            return Ok(&m[start as usize..end as usize]);
        }
        if !self.cur.holds(i) {
            if self.ahead.holds(i) {
                std::mem::swap(&mut self.cur, &mut self.ahead);
            } else {
                let mut c = std::mem::take(&mut self.cur);
                self.fill(&mut c, i)?;
                self.cur = c;
            }
        }
        let base = self.range(self.cur.first).0;
        Ok(&self.cur.data[(start - base) as usize..(end - base) as usize])
    }

    /// Read the chunk from block `i` ahead, unless it is at hand. A failure here is
    /// retried (and reported) when the block is needed.
    fn prefetch(&mut self, i: u64) {
        if !matches!(self.source, Source::File(_)) || i >= self.count || self.cur.holds(i) || self.ahead.holds(i) {
            return;
        }
        let mut c = std::mem::take(&mut self.ahead);
        if self.fill(&mut c, i).is_err() {
            c.blocks = 0;
        }
        self.ahead = c;
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
