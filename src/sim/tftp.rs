//! A TFTP read client (RFC 1350, options RFC 2347, `blksize` RFC 2348, `tsize` RFC 2349),
//! as a PXE ROM fetches the iPXE binary.
//!
//! No kept async TFTP *client* crate exists (async-tftp, which the heads use, is a server
//! only), and the client side of a read is small: a read request with `blksize` and
//! `tsize`, the server's OACK answered with ACK 0 (or plain DATA 1 from a server that
//! ignores options: 512-byte blocks), each DATA block acknowledged, the transfer's end
//! at the first short block. What a firmware must get right, and this does:
//!
//! - **The server's transfer ID** is the port of its first answer; a packet from any other
//!   port gets ERROR 5 and changes nothing (RFC 1350 §4).
//! - **Retransmission**: the last packet sent (the request, or the last ACK) is sent again
//!   when the wait ends, on a schedule that restarts at every block; when the schedule
//!   runs out the transfer fails. A duplicate DATA (our ACK was lost) is ACKed again and
//!   not counted twice. Block numbers roll over past 65535.
//! - **Bounded** in bytes (`max_bytes`), in time (the caller's deadline) and in packets.
//! - **Checked**: the bytes are hashed as they arrive; when the server announced `tsize`,
//!   the length must match it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::net::UdpSocket;

use crate::model::Digest;

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// RFC 1350's block size when no option was agreed.
const DEFAULT_BLKSIZE: u16 = 512;

/// How a transfer is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpOptions {
    /// `blksize` asked for (iPXE: 1432); 0: send no options at all.
    pub blksize: u16,
    /// Waits after each transmission of one packet; the transfer fails when the last one
    /// passes without progress. Default: iPXE's retry timer (0.25 s doubling to 8 s).
    pub schedule: Vec<Duration>,
    /// Largest file accepted.
    pub max_bytes: u64,
}

impl Default for TftpOptions {
    fn default() -> Self {
        TftpOptions {
            blksize: 1432,
            schedule: [250, 500, 1000, 2000, 4000, 8000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            max_bytes: 64 << 20,
        }
    }
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    pub digest: Digest,
    /// Packets we sent again after a wait ran out.
    pub retransmissions: u32,
    /// ACKs sent again for a duplicate DATA.
    pub duplicates: u32,
    /// Block size in use.
    pub blksize: u16,
    /// The size the server announced (`tsize`).
    pub tsize: Option<u64>,
}

/// Why a transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TftpError {
    #[error("no answer from {server} for {file} (block {block}) after {sent} transmissions")]
    Timeout {
        server: SocketAddr,
        file: String,
        block: u16,
        sent: u32,
    },
    #[error("{server} refused {file}: error {code}: {message}")]
    Server {
        server: SocketAddr,
        file: String,
        code: u16,
        message: String,
    },
    #[error("{server} sent a bad packet for {file}: {why}")]
    Protocol {
        server: SocketAddr,
        file: String,
        why: String,
    },
    #[error("{file} is larger than {limit} bytes; refused")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: the server announced {tsize} bytes (tsize) and sent {got}")]
    SizeMismatch { file: String, tsize: u64, got: u64 },
    #[error("TFTP socket: {0}")]
    Io(String),
    #[error("deadline passed during the TFTP transfer of {0}")]
    Deadline(String),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// A read request, with `blksize` and `tsize 0` unless `blksize` is 0.
pub fn rrq(file: &str, blksize: u16) -> Vec<u8> {
    let mut p = RRQ.to_be_bytes().to_vec();
    for s in [file, "octet"] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    if blksize > 0 {
        for s in ["blksize", &blksize.to_string(), "tsize", "0"] {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

/// NUL-terminated strings after the opcode (OACK options, an ERROR's message).
fn strings(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Read `file` from `server` over `sock` (bound by the caller: a node's leased address),
/// within `deadline`.
pub async fn read(
    sock: &UdpSocket,
    server: SocketAddr,
    file: &str,
    opts: &TftpOptions,
    deadline: Instant,
) -> Result<Transfer, TftpError> {
    let schedule: &[Duration] = if opts.schedule.is_empty() {
        &[Duration::from_secs(1)]
    } else {
        &opts.schedule
    };
    let proto = |why: String| TftpError::Protocol {
        server,
        file: file.to_owned(),
        why,
    };
    let io = |e: std::io::Error| TftpError::Io(e.to_string());
    let mut with_options = opts.blksize > 0;
    let mut last = rrq(file, opts.blksize);
    let mut dest = server;
    let mut tid: Option<SocketAddr> = None;
    let mut blksize = DEFAULT_BLKSIZE;
    let mut tsize = None;
    let mut expected: u16 = 1;
    let mut started = false;
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let (mut retransmissions, mut duplicates) = (0u32, 0u32);
    let mut tries = 0usize;
    sock.send_to(&last, dest).await.map_err(io)?;
    let mut wait_until = Instant::now() + schedule[0];
    let mut buf = vec![0u8; 65536 + 4];
    // Bounded: every pass either makes progress (a block, at most max_bytes/blksize + 1
    // of them), retransmits (at most schedule.len() per block) or ignores a stray packet;
    // and the deadline bounds the whole.
    loop {
        let until = wait_until.min(deadline);
        let got = tokio::time::timeout_at(until.into(), sock.recv_from(&mut buf)).await;
        let (n, from) = match got {
            Err(_) if Instant::now() >= deadline => return Err(TftpError::Deadline(file.to_owned())),
            Err(_) => {
                tries += 1;
                if tries >= schedule.len() {
                    return Err(TftpError::Timeout {
                        server,
                        file: file.to_owned(),
                        block: expected.wrapping_sub(1),
                        sent: tries as u32,
                    });
                }
                retransmissions += 1;
                sock.send_to(&last, dest).await.map_err(io)?;
                wait_until = Instant::now() + schedule[tries];
                continue;
            }
            Ok(Err(e)) => return Err(io(e)),
            Ok(Ok(x)) => x,
        };
        if from.ip() != server.ip() {
            continue;
        }
        match tid {
            Some(t) if t != from => {
                let _ = sock.send_to(&error(5, "Unknown transfer ID"), from).await;
                continue;
            }
            Some(_) => {}
            None => {
                tid = Some(from);
                dest = from;
            }
        }
        let pkt = &buf[..n];
        let Some(op) = u16_at(pkt, 0) else { continue };
        match op {
            OACK if !started && with_options => {
                let s = strings(&pkt[2..]);
                let mut kv = s.chunks(2).filter(|c| c.len() == 2 && !c[0].is_empty());
                for c in kv.by_ref() {
                    let (k, v) = (c[0].to_ascii_lowercase(), &c[1]);
                    match k.as_str() {
                        "blksize" => {
                            let b: u16 = v.parse().map_err(|_| proto(format!("blksize {v:?}")))?;
                            if b < 8 || b > opts.blksize {
                                let _ = sock.send_to(&error(8, "bad blksize"), dest).await;
                                return Err(proto(format!("blksize {b} outside 8..={}", opts.blksize)));
                            }
                            blksize = b;
                        }
                        "tsize" => tsize = Some(v.parse().map_err(|_| proto(format!("tsize {v:?}")))?),
                        other => {
                            let _ = sock.send_to(&error(8, "unrequested option"), dest).await;
                            return Err(proto(format!("unrequested option {other:?} in OACK")));
                        }
                    }
                }
                if tsize.is_some_and(|t| t > opts.max_bytes) {
                    let _ = sock.send_to(&error(3, "too large"), dest).await;
                    return Err(TftpError::TooLarge {
                        file: file.to_owned(),
                        limit: opts.max_bytes,
                    });
                }
                started = true;
                last = ack(0);
            }
            DATA => {
                let Some(block) = u16_at(pkt, 2) else { continue };
                if block == expected.wrapping_sub(1) && started {
                    // Our ACK was lost: say it again.
                    duplicates += 1;
                    sock.send_to(&last, dest).await.map_err(io)?;
                    continue;
                }
                if block != expected {
                    continue;
                }
                if !started {
                    // A server that ignores options answers with DATA 1 of 512 bytes.
                    started = true;
                    blksize = DEFAULT_BLKSIZE;
                }
                let data = &pkt[4..];
                if data.len() > usize::from(blksize) {
                    return Err(proto(format!(
                        "block {block} of {} bytes > blksize {blksize}",
                        data.len()
                    )));
                }
                bytes += data.len() as u64;
                if bytes > opts.max_bytes {
                    let _ = sock.send_to(&error(3, "too large"), dest).await;
                    return Err(TftpError::TooLarge {
                        file: file.to_owned(),
                        limit: opts.max_bytes,
                    });
                }
                hash.update(data);
                last = ack(block);
                expected = block.wrapping_add(1);
                if data.len() < usize::from(blksize) {
                    sock.send_to(&last, dest).await.map_err(io)?;
                    if let Some(t) = tsize.filter(|&t| t != bytes) {
                        return Err(TftpError::SizeMismatch {
                            file: file.to_owned(),
                            tsize: t,
                            got: bytes,
                        });
                    }
                    return Ok(Transfer {
                        bytes,
                        digest: Digest(hash.finalize().into()),
                        retransmissions,
                        duplicates,
                        blksize,
                        tsize,
                    });
                }
            }
            ERROR => {
                let code = u16_at(pkt, 2).unwrap_or(0);
                let message = strings(pkt.get(4..).unwrap_or_default())
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                if code == 8 && with_options && !started {
                    // Option negotiation refused: ask again without options (RFC 2347).
                    with_options = false;
                    tid = None;
                    dest = server;
                    last = rrq(file, 0);
                } else {
                    return Err(TftpError::Server {
                        server,
                        file: file.to_owned(),
                        code,
                        message,
                    });
                }
            }
            _ => continue,
        }
        sock.send_to(&last, dest).await.map_err(io)?;
        tries = 0;
        wait_until = Instant::now() + schedule[0];
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::boot::tftp::{run, TftpConfig};

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The heads' own TFTP server on loopback, serving `files` from a temporary root.
    async fn head_server(files: &[(&str, &[u8])]) -> (SocketAddr, tempfile::TempDir, tokio::sync::oneshot::Sender<()>) {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let cfg = TftpConfig {
            enabled: true,
            root: dir.path().to_owned(),
            timeout_ms: 200,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(run(sock, cfg, None, async move {
            let _ = stopped.await;
        }));
        (addr, dir, stop)
    }

    async fn client() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    #[tokio::test]
    async fn reads_a_file_from_the_heads_server_with_blksize_and_tsize() {
        let body = content(74_213); // undionly.kpxe's size: 52 blocks of 1432
        let (addr, _dir, _stop) = head_server(&[("undionly.kpxe", &body)]).await;
        let s = client().await;
        let t = read(&s, addr, "undionly.kpxe", &TftpOptions::default(), soon())
            .await
            .unwrap();
        assert_eq!(t.bytes, body.len() as u64);
        assert_eq!(t.digest, Digest::of(&body));
        assert_eq!((t.blksize, t.tsize), (1432, Some(body.len() as u64)));
        assert_eq!(t.retransmissions, 0);
        // Without options: 512-byte blocks, and an exact multiple ends with an empty block.
        let body = content(512 * 3);
        let (addr, _dir, _stop) = head_server(&[("f", &body)]).await;
        let opts = TftpOptions {
            blksize: 0,
            ..Default::default()
        };
        let t = read(&s, addr, "f", &opts, soon()).await.unwrap();
        assert_eq!((t.bytes, t.blksize, t.tsize), (1536, 512, None));
        assert_eq!(t.digest, Digest::of(&body));
    }

    #[tokio::test]
    async fn a_missing_file_is_the_servers_error_and_a_silent_server_times_out() {
        let (addr, _dir, _stop) = head_server(&[]).await;
        let s = client().await;
        let e = read(&s, addr, "nope.efi", &TftpOptions::default(), soon())
            .await
            .unwrap_err();
        assert!(matches!(e, TftpError::Server { code: 1, .. }), "{e}");
        // Nobody listens here: three transmissions of the request, then the error.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let opts = TftpOptions {
            schedule: vec![Duration::from_millis(50); 3],
            ..Default::default()
        };
        let t = Instant::now();
        let e = read(&s, silent.local_addr().unwrap(), "x", &opts, soon())
            .await
            .unwrap_err();
        assert!(matches!(e, TftpError::Timeout { sent: 3, block: 0, .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        let mut buf = [0u8; 600];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &rrq("x", 1432)[..], "what went out is an RRQ with options");
    }

    /// A hand-written server: answers the request from a second port (with an OACK of
    /// `oack` as blksize when given, else straight DATA 1), sends one stray DATA from a
    /// third port after block 1, and drops the first transmission of block `drop`.
    async fn lossy_server(body: Vec<u8>, oack: Option<u16>, drop: Option<u16>) -> (SocketAddr, Arc<AtomicBool>) {
        let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = listen.local_addr().unwrap();
        let stray_refused = Arc::new(AtomicBool::new(false));
        let seen = stray_refused.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let (_, client) = listen.recv_from(&mut buf).await.unwrap();
            let stray = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let xfer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let blksize = usize::from(oack.unwrap_or(DEFAULT_BLKSIZE));
            let wait_ack = |want: u16| {
                let xfer = &xfer;
                async move {
                    let mut b = [0u8; 64];
                    loop {
                        let r = tokio::time::timeout(Duration::from_secs(2), xfer.recv_from(&mut b)).await;
                        let Ok(Ok((n, _))) = r else { return false };
                        match (u16_at(&b[..n], 0), u16_at(&b[..n], 2)) {
                            (Some(ACK), Some(x)) if x == want => return true,
                            (Some(ACK), _) => return false, // the client asks again: resend
                            _ => {}
                        }
                    }
                }
            };
            if let Some(b) = oack {
                let mut p = OACK.to_be_bytes().to_vec();
                p.extend_from_slice(format!("blksize\0{b}\0").as_bytes());
                xfer.send_to(&p, client).await.unwrap();
                assert!(wait_ack(0).await, "ACK 0 after the OACK");
            }
            let mut blocks: Vec<&[u8]> = body.chunks(blksize).collect();
            if body.len().is_multiple_of(blksize) {
                blocks.push(&[]); // an exact multiple ends with an empty block
            }
            let mut dropped = false;
            for (i, chunk) in blocks.iter().enumerate() {
                let block = (i as u32 + 1) as u16;
                let mut p = DATA.to_be_bytes().to_vec();
                p.extend_from_slice(&block.to_be_bytes());
                p.extend_from_slice(chunk);
                if drop == Some(block) && !dropped {
                    dropped = true;
                } else {
                    xfer.send_to(&p, client).await.unwrap();
                }
                if i == 0 {
                    // From an unknown port: the client must refuse it with ERROR 5.
                    stray.send_to(&p, client).await.unwrap();
                    let mut b = [0u8; 64];
                    if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(2), stray.recv_from(&mut b)).await
                    {
                        seen.store(
                            u16_at(&b[..n], 0) == Some(ERROR) && u16_at(&b[..n], 2) == Some(5),
                            Ordering::SeqCst,
                        );
                    }
                }
                // Until this block is acknowledged, resend it whenever the client repeats
                // its previous ACK.
                let mut ok = false;
                for _ in 0..10 {
                    if wait_ack(block).await {
                        ok = true;
                        break;
                    }
                    xfer.send_to(&p, client).await.unwrap();
                }
                if !ok {
                    return;
                }
            }
        });
        (addr, stray_refused)
    }

    #[tokio::test]
    async fn a_lost_block_is_retransmitted_and_a_foreign_port_is_refused() {
        let body = content(4 * 512 + 100);
        let (addr, stray) = lossy_server(body.clone(), None, Some(3)).await;
        let s = client().await;
        let opts = TftpOptions {
            blksize: 0,
            schedule: vec![Duration::from_millis(100); 4],
            ..Default::default()
        };
        let t = read(&s, addr, "f", &opts, soon()).await.unwrap();
        assert_eq!(t.digest, Digest::of(&body));
        assert_eq!(t.retransmissions, 1, "the ACK of block 2 went again once");
        assert!(stray.load(Ordering::SeqCst), "the stray port got ERROR 5");
    }

    #[tokio::test]
    async fn block_numbers_roll_over_past_65535() {
        // 66,000 blocks of 8 bytes (blksize agreed by OACK): block 65536 is numbered 0.
        let body = content(8 * 66_000 + 3);
        let (addr, _) = lossy_server(body.clone(), Some(8), None).await;
        let s = client().await;
        let opts = TftpOptions {
            blksize: 8,
            max_bytes: 1 << 20,
            ..Default::default()
        };
        let t = read(&s, addr, "f", &opts, Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!((t.bytes, t.blksize), (body.len() as u64, 8));
        assert_eq!(t.digest, Digest::of(&body));
    }

    #[tokio::test]
    async fn a_file_over_the_limit_is_refused() {
        let body = content(3000);
        let (addr, _dir, _stop) = head_server(&[("big", &body)]).await;
        let s = client().await;
        let opts = TftpOptions {
            max_bytes: 2000,
            ..Default::default()
        };
        let e = read(&s, addr, "big", &opts, soon()).await.unwrap_err();
        assert!(matches!(e, TftpError::TooLarge { limit: 2000, .. }), "{e}");
    }
}
