//! The protocol against a raw client on 127.0.0.1 (LAB.md allows loopback): plain
//! RFC 1350, options, windows with losses, duplicate ACKs, timeouts, block-number
//! wrap, refusals, the transfer cap and stopping. Real clients (tftp-hpa, curl, iPXE
//! in QEMU) are in `tests/it/tftp.rs` and `tests/it/pxe.rs`.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

struct Srv {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_block_size: 1468,
        max_window_size: 16,
        timeout: Duration::from_secs(3),
        max_send_retries: 20,
        max_transfers: 64,
        max_per_client: 64,
        idle_timeout: Duration::from_secs(60),
    }
}

/// A server over a root holding `files`; files above `mem_limit` are read from disk.
fn start(files: &[(&str, Vec<u8>)], mem_limit: u64, limits: Limits) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    for (n, d) in files {
        std::fs::write(dir.path().join(n), d).unwrap();
    }
    std::fs::write(dir.path().join("..secret"), b"x").unwrap();
    let root = Root::new(dir.path(), mem_limit, 64 << 20).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::spawn(move || serve(sock, root, limits, None, st));
    Srv {
        addr,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn rrq(file: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [file, mode].into_iter().chain(opts.iter().flat_map(|(k, v)| [*k, *v])) {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn ack(s: &UdpSocket, to: SocketAddr, n: u16) {
    s.send_to(&[0, 4, (n >> 8) as u8, n as u8], to).unwrap();
}

/// A fetch as RFC 7440 describes the receiver: ACK the last block of each window (or
/// the last block received in order, on a gap). `drop_once` lists block indexes (from
/// 0) the client pretends to lose the first time they arrive. Returns the data, the
/// OACK's options, and the transfer IDs that sent data.
fn fetch(
    srv: SocketAddr,
    file: &str,
    opts: &[(&str, &str)],
    drop_once: &[u64],
) -> (Vec<u8>, HashMap<String, String>, HashSet<SocketAddr>) {
    let s = client();
    s.send_to(&rrq(file, "octet", opts), srv).unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut out = Vec::new();
    let mut oack = HashMap::new();
    let mut tids = HashSet::new();
    let mut dropped: HashSet<u64> = HashSet::new();
    let (mut win, mut bs) = (1u64, 512usize);
    let mut next = 0u64; // index of the block expected
    let mut in_window = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let (n, from) = s.recv_from(&mut buf).expect("the server keeps sending");
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        match op {
            OACK => {
                let f: Vec<&str> = buf[2..n]
                    .split(|b| *b == 0)
                    .filter(|x| !x.is_empty())
                    .map(|x| std::str::from_utf8(x).unwrap())
                    .collect();
                oack = f.chunks(2).map(|c| (c[0].to_owned(), c[1].to_owned())).collect();
                win = oack.get("windowsize").map_or(1, |w| w.parse().unwrap());
                bs = oack.get("blksize").map_or(512, |b| b.parse().unwrap());
                ack(&s, from, 0);
            }
            DATA => {
                tids.insert(from);
                let num = u16::from_be_bytes([buf[2], buf[3]]);
                if num != wire(next) {
                    // Out of order (after a loss) or a duplicate: acknowledge what we have.
                    if next > 0 {
                        ack(&s, from, wire(next - 1));
                    }
                    in_window = 0;
                    continue;
                }
                if drop_once.contains(&next) && dropped.insert(next) {
                    continue;
                }
                out.extend_from_slice(&buf[4..n]);
                let end = n - 4 < bs;
                next += 1;
                in_window += 1;
                if end || in_window == win {
                    ack(&s, from, wire(next - 1));
                    in_window = 0;
                }
                if end {
                    return (out, oack, tids);
                }
            }
            ERROR => panic!("server error: {:?}", String::from_utf8_lossy(&buf[4..n])),
            _ => panic!("unexpected packet {op}"),
        }
    }
    panic!("transfer took over 60 s");
}

/// The first packet answering a request, as (opcode, code or block, message).
fn answer(srv: SocketAddr, req: &[u8]) -> (u16, u16, String) {
    let s = client();
    s.send_to(req, srv).unwrap();
    let mut buf = [0u8; 1024];
    let (n, _) = s.recv_from(&mut buf).expect("an answer");
    let msg = String::from_utf8_lossy(&buf[4..n]).trim_end_matches('\0').to_string();
    (
        u16::from_be_bytes([buf[0], buf[1]]),
        u16::from_be_bytes([buf[2], buf[3]]),
        msg,
    )
}

#[test]
fn requests_parse_and_options_are_granted_within_limits() {
    let r = parse_request(&rrq("a/b.efi", "OCTET", &[("BLKSIZE", "1432"), ("tsize", "0")])).unwrap();
    assert_eq!(
        r,
        Request::Read {
            file: "a/b.efi".into(),
            mode: "octet".into(),
            opts: vec![("blksize".into(), "1432".into()), ("tsize".into(), "0".into())]
        }
    );
    assert!(parse_request(&[0, 4, 0, 1]).is_none(), "an ACK is not a request");
    assert!(parse_request(&[0, 1, b'x']).is_none(), "unterminated");
    let opts: Vec<(String, String)> = [
        ("blksize", "65464"),
        ("windowsize", "64"),
        ("timeout", "0"),
        ("tsize", "0"),
        ("foo", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let g = Granted::negotiate(&opts, &limits(), 1234);
    assert_eq!(
        g,
        Granted {
            blksize: Some(1468),
            timeout: None,
            tsize: Some(1234),
            windowsize: Some(16)
        }
    );
    let bad: Vec<(String, String)> = vec![("blksize".into(), "7".into()), ("tsize".into(), "5".into())];
    assert!(
        Granted::negotiate(&bad, &limits(), 1).is_empty(),
        "nothing acceptable: no OACK"
    );
}

#[test]
fn plain_rfc_1350_without_options_ends_with_a_short_or_empty_block() {
    let (a, b) = (data(1500), data(1024));
    let srv = start(&[("a", a.clone()), ("b", b.clone())], 1 << 20, limits());
    let (got, oack, tids) = fetch(srv.addr, "a", &[], &[]);
    assert!(got == a && oack.is_empty() && tids.len() == 1);
    // 1024 = 2 × 512: a third, empty block says the file ended.
    assert!(fetch(srv.addr, "b", &[], &[]).0 == b);
}

#[test]
fn options_windows_and_losses_from_memory_and_from_the_file() {
    let f = data(300_000);
    for mem_limit in [1 << 20, 0] {
        let srv = start(&[("f", f.clone())], mem_limit, limits());
        let opts = [
            ("blksize", "1000"),
            ("tsize", "0"),
            ("timeout", "2"),
            ("windowsize", "8"),
        ];
        let (got, oack, _) = fetch(srv.addr, "f", &opts, &[]);
        assert!(got == f, "mem_limit {mem_limit}: bytes differ");
        let want: HashMap<String, String> = [
            ("blksize", "1000"),
            ("tsize", "300000"),
            ("timeout", "2"),
            ("windowsize", "8"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(oack, want);
        // Losses inside windows and at the edge of a file read (64 blocks of 1000 per
        // read from disk): the server resends from the block after the last ACK.
        let lost = [0, 3, 63, 64, 65, 130, 299];
        let (got, _, _) = fetch(srv.addr, "f", &opts, &lost);
        assert!(got == f, "mem_limit {mem_limit}: bytes differ after losses");
        let (got, _, _) = fetch(srv.addr, "f", &[("blksize", "1432")], &[5, 6]);
        assert!(got == f, "mem_limit {mem_limit}: lock-step with losses");
    }
}

#[test]
fn block_numbers_wrap_after_65535() {
    // 65,537 blocks of 8 bytes: block 65535, then 0, then 1.
    let f = data(65_536 * 8 + 3);
    let srv = start(&[("w", f.clone())], 0, limits());
    let (got, _, _) = fetch(
        srv.addr,
        "w",
        &[("blksize", "8"), ("windowsize", "16")],
        &[65_534, 65_535],
    );
    assert!(got == f);
}

#[test]
fn duplicate_acks_are_not_answered_and_silence_is_retransmitted_then_given_up() {
    let f = data(3000);
    let srv = start(
        &[("f", f)],
        1 << 20,
        Limits {
            max_send_retries: 2,
            ..limits()
        },
    );
    let s = client();
    s.send_to(&rrq("f", "octet", &[("timeout", "1")]), srv.addr).unwrap();
    let mut buf = [0u8; 2048];
    let (_, tid) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, OACK as u8]);
    ack(&s, tid, 0);
    let (_, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 1]);
    ack(&s, tid, 1);
    ack(&s, tid, 1);
    ack(&s, tid, 1);
    // Block 2 comes once for the first ACK 1; the duplicates get nothing, so the next
    // packet is block 2 again only when the 1 s timeout retransmits it.
    let t = Instant::now();
    s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 2]);
    s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 2]);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "the repeat is the timeout's, not the duplicates'"
    );
    // Unanswered: after 2 retransmissions the server gives up with an error.
    s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 2]);
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, ERROR as u8], "{:?}", &buf[..n]);
}

#[test]
fn refusals_are_tftp_errors() {
    let srv = start(&[("ok", data(10))], 1 << 20, limits());
    assert_eq!(
        answer(srv.addr, &rrq("missing", "octet", &[])),
        (ERROR, 1, "File not found".into())
    );
    assert_eq!(answer(srv.addr, &rrq("../etc/passwd", "octet", &[])).1, 2);
    assert_eq!(answer(srv.addr, &rrq("/etc/passwd", "octet", &[])).1, 2);
    let mut wrq = rrq("ok", "octet", &[]);
    wrq[1] = 2;
    let (op, code, msg) = answer(srv.addr, &wrq);
    assert_eq!((op, code), (ERROR, 2));
    assert!(msg.contains("read-only"), "{msg}");
    assert_eq!(answer(srv.addr, &rrq("ok", "mail", &[])).0, ERROR);
    // netascii is served as the bytes are (boot files are binary).
    assert_eq!(
        answer(srv.addr, &rrq("ok", "netascii", &[])),
        (DATA, 1, String::from_utf8_lossy(&data(10)).into())
    );
}

#[test]
fn a_retransmitted_request_does_not_start_a_second_transfer() {
    let f = data(200 * 512);
    let srv = start(&[("f", f.clone())], 1 << 20, limits());
    let s = client();
    let req = rrq("f", "octet", &[]);
    s.send_to(&req, srv.addr).unwrap();
    s.send_to(&req, srv.addr).unwrap();
    let mut buf = [0u8; 1024];
    let mut tids = HashSet::new();
    let mut got = Vec::new();
    let mut expect = 1u16;
    while got.len() <= f.len() {
        let (n, from) = s.recv_from(&mut buf).unwrap();
        tids.insert(from);
        let num = u16::from_be_bytes([buf[2], buf[3]]);
        if num == expect {
            got.extend_from_slice(&buf[4..n]);
            ack(&s, from, num);
            expect += 1;
            if n - 4 < 512 {
                break;
            }
        }
    }
    assert!(got == f);
    assert_eq!(tids.len(), 1, "one transfer for the two copies of the request");
}

#[test]
fn requests_beyond_the_cap_wait_for_a_free_transfer() {
    let f = data(2000);
    let srv = start(
        &[("f", f.clone())],
        1 << 20,
        Limits {
            max_transfers: 1,
            ..limits()
        },
    );
    // A holds the only transfer (it does not ACK yet).
    let a = client();
    a.send_to(&rrq("f", "octet", &[]), srv.addr).unwrap();
    let mut buf = [0u8; 1024];
    let (_, tid) = a.recv_from(&mut buf).unwrap();
    // B's request is dropped while A's transfer runs.
    let b = client();
    b.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    b.send_to(&rrq("f", "octet", &[]), srv.addr).unwrap();
    assert!(b.recv_from(&mut buf).is_err(), "no answer at the cap");
    // A finishes; B's retransmitted request is served.
    let mut block = 1u16;
    loop {
        ack(&a, tid, block);
        let (n, _) = a.recv_from(&mut buf).unwrap();
        block = u16::from_be_bytes([buf[2], buf[3]]);
        if n - 4 < 512 {
            ack(&a, tid, block);
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        assert!(Instant::now() < deadline, "B is never served");
        b.send_to(&rrq("f", "octet", &[]), srv.addr).unwrap();
        if let Ok((_, _)) = b.recv_from(&mut buf) {
            break u16::from_be_bytes([buf[0], buf[1]]);
        }
    };
    assert_eq!(served, DATA);
}

#[test]
fn stopping_ends_the_server_and_its_transfers() {
    let srv = start(&[("f", data(100_000))], 1 << 20, limits());
    let s = client();
    s.send_to(&rrq("f", "octet", &[]), srv.addr).unwrap();
    let mut buf = [0u8; 1024];
    s.recv_from(&mut buf).unwrap(); // a transfer is running, waiting for our ACK
    let mut srv = srv;
    srv.stop.store(true, Ordering::Relaxed);
    let t = Instant::now();
    let result = srv.thread.take().unwrap().join().unwrap();
    assert!(result.is_ok());
    assert!(t.elapsed() < Duration::from_secs(2), "stopped within its poll interval");
    // The transfer thread stops too: it sends nothing more, even unacknowledged.
    s.set_read_timeout(Some(Duration::from_millis(3500))).unwrap();
    let retransmits = std::iter::from_fn(|| s.recv_from(&mut buf).ok()).take(3).count();
    assert_eq!(retransmits, 0, "no retransmission after the stop (the timeout is 3 s)");
}

#[test]
fn a_client_over_its_limit_gets_an_error_and_a_place_when_one_ends() {
    let srv = start(
        &[("f", data(2000))],
        1 << 20,
        Limits {
            max_per_client: 2,
            ..limits()
        },
    );
    // Two transfers held open (no ACK yet), from two ports of the same address.
    let held: Vec<(UdpSocket, SocketAddr)> = (0..2)
        .map(|_| {
            let c = client();
            c.send_to(&rrq("f", "octet", &[]), srv.addr).unwrap();
            let mut buf = [0u8; 1024];
            let (_, tid) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..4], &[0, 3, 0, 1]);
            (c, tid)
        })
        .collect();
    let (op, code, msg) = answer(srv.addr, &rrq("f", "octet", &[]));
    assert_eq!((op, code), (ERROR, 0));
    assert!(msg.contains("too many transfers from this client"), "{msg}");
    // One of them ends (the client says so): the next request is served.
    let (c, tid) = &held[0];
    c.send_to(&ErrorPacket::new(0, "done").encode(), *tid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (op, _, _) = answer(srv.addr, &rrq("f", "octet", &[]));
        if op == DATA {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_silent_client_is_dropped_after_the_idle_timeout_whatever_timeout_it_asked() {
    let srv = start(
        &[("f", data(3000))],
        1 << 20,
        Limits {
            idle_timeout: Duration::from_secs(1),
            ..limits()
        },
    );
    let s = client();
    // timeout=255: without the idle bound the server would wait 255 s per retry.
    s.send_to(&rrq("f", "octet", &[("timeout", "255")]), srv.addr).unwrap();
    let mut buf = [0u8; 2048];
    let t = Instant::now();
    let (_, tid) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, OACK as u8]);
    ack(&s, tid, 0);
    s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, 3, 0, 1]);
    // No more ACKs: an error within about a second of the last one.
    let (n, _) = s.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..4], &[0, ERROR as u8, 0, 0], "{:?}", &buf[..n]);
    assert!(String::from_utf8_lossy(&buf[4..n]).contains("no acknowledgement"));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}
