//! Fuzz targets for the TFTP request side (issue 12 part 6), as proptest so they run in
//! `cargo test` with a fixed number of cases: the request parser and option
//! negotiation on their own, then a live server on 127.0.0.1 fed hostile datagrams,
//! which must answer only well-formed packets (or nothing) and keep serving.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree as _;
use proptest::test_runner::TestRunner;

use super::root::Root;
use super::server::{parse_request, serve, Granted, Limits, Request};

fn limits() -> Limits {
    Limits {
        max_block_size: 1468,
        max_window_size: 16,
        timeout: Duration::from_millis(200),
        max_send_retries: 1,
        max_transfers: 64,
        // All hostile clients share 127.0.0.1; the per-client cap has tests of its own.
        max_per_client: 64,
        idle_timeout: Duration::from_secs(1),
    }
}

fn encode(op: u16, strings: &[&str]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    for s in strings {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn option_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("blksize".to_owned()),
        Just("BLKSIZE".to_owned()),
        Just("tsize".to_owned()),
        Just("timeout".to_owned()),
        Just("windowsize".to_owned()),
        Just("multicast".to_owned()),
        "[a-zA-Z]{0,12}",
    ]
}

fn option_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("".to_owned()),
        Just("65535".to_owned()),
        Just("65536".to_owned()),
        Just("99999999999999999999999".to_owned()),
        (0u32..70_000).prop_map(|n| n.to_string()),
        "[ -~]{0,8}",
    ]
}

fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ipxe.efi".to_owned()),
        Just("../etc/passwd".to_owned()),
        Just("/ipxe.efi".to_owned()),
        Just("".to_owned()),
        Just("a".repeat(600)),
        "[ -~]{0,40}",
    ]
}

/// A request as a client would build it, possibly with hostile fields.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(1u16), Just(2u16)],
        file_name(),
        prop_oneof![Just("octet"), Just("netascii"), Just("OCTET"), Just("mail"), Just("")],
        proptest::collection::vec((option_key(), option_value()), 0..6),
    )
        .prop_map(|(op, file, mode, opts)| {
            let mut parts = vec![file.as_str(), mode];
            for (k, v) in &opts {
                parts.push(k);
                parts.push(v);
            }
            encode(op, &parts)
        })
}

/// A request with bytes flipped, cut or inserted: NULs in odd places, truncated
/// options, wrong opcodes.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        request(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    )
        .prop_map(|(mut p, edits)| {
            for (at, byte, kind) in edits {
                if p.is_empty() {
                    p.push(byte);
                    continue;
                }
                let i = at.index(p.len());
                match kind {
                    0 => p[i] = byte,
                    1 => p.truncate(i),
                    _ => p.insert(i, byte),
                }
            }
            p
        })
}

/// Anything a datagram to the request port may hold.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => request(),
        3 => mutated(),
        2 => proptest::collection::vec(any::<u8>(), 0..600),
        // Stray transfer packets at the request port: DATA, ACK, ERROR, OACK.
        2 => (3u16..=6, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(op, rest)| {
            let mut p = op.to_be_bytes().to_vec();
            p.extend(rest);
            p
        }),
    ]
}

/// Check one packet the server sent; `Err` says what is wrong with it.
fn well_formed(p: &[u8], blksize_max: usize) -> Result<(), String> {
    let strings = |b: &[u8]| -> Result<Vec<String>, String> {
        if b.last() != Some(&0) {
            return Err(format!("not NUL-terminated: {b:?}"));
        }
        b[..b.len() - 1]
            .split(|c| *c == 0)
            .map(|s| String::from_utf8(s.to_vec()).map_err(|e| e.to_string()))
            .collect()
    };
    match p.get(..2).map(|o| u16::from_be_bytes([o[0], o[1]])) {
        Some(3) if p.len() >= 4 && p.len() <= 4 + blksize_max => Ok(()),
        Some(5) if p.len() >= 5 => strings(&p[4..]).map(|_| ()),
        Some(6) => {
            let kv = strings(&p[2..])?;
            let known = ["blksize", "timeout", "tsize", "windowsize"];
            if kv.len() % 2 != 0
                || kv
                    .chunks(2)
                    .any(|c| !known.contains(&c[0].as_str()) || c[1].parse::<u64>().is_err())
            {
                return Err(format!("bad OACK {kv:?}"));
            }
            Ok(())
        }
        _ => Err(format!("not a TFTP reply: {p:?}")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Whatever arrives, the parser returns a request or None; what it returns
    /// holds no NUL and encodes back to a packet that parses the same.
    #[test]
    fn a_request_parses_or_is_refused_and_round_trips(p in prop_oneof![datagram(), mutated()]) {
        if let Some(r) = parse_request(&p) {
            match &r {
                Request::Read { file, mode, opts } => {
                    prop_assert!(!file.contains('\0') && !mode.contains('\0'));
                    prop_assert!(opts.iter().all(|(k, _)| *k == k.to_ascii_lowercase()));
                    let mut parts = vec![file.as_str(), mode.as_str()];
                    for (k, v) in opts {
                        parts.push(k);
                        parts.push(v);
                    }
                    prop_assert_eq!(parse_request(&encode(1, &parts)), Some(r));
                }
                Request::Write { file } => prop_assert!(!file.contains('\0')),
            }
        }
    }

    /// Granted options stay inside the limits whatever the client asks.
    #[test]
    fn negotiation_grants_only_what_the_limits_allow(
        opts in proptest::collection::vec((option_key(), option_value()), 0..8),
        size in any::<u64>(),
    ) {
        let l = limits();
        let opts: Vec<(String, String)> = opts.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        let g = Granted::negotiate(&opts, &l, size);
        if let Some(b) = g.blksize {
            prop_assert!((8..=l.max_block_size).contains(&b));
        }
        if let Some(w) = g.windowsize {
            prop_assert!((1..=l.max_window_size).contains(&w));
        }
        if let Some(t) = g.timeout {
            prop_assert!(t >= 1);
        }
        if let Some(s) = g.tsize {
            prop_assert_eq!(s, size);
        }
    }
}

/// A live server fed 1,500 hostile datagrams from a few clients answers each with a
/// well-formed packet or nothing, and still serves a good request afterwards.
#[test]
fn a_live_server_survives_hostile_datagrams() {
    let dir = tempfile::tempdir().unwrap();
    let file: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("ipxe.efi"), &file).unwrap();
    let root = Root::new(dir.path(), 1 << 20, 64 << 20).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let thread = std::thread::spawn(move || serve(sock, root, limits(), None, st));

    let clients: Vec<UdpSocket> = (0..4)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_millis(60))).unwrap();
            c
        })
        .collect();
    let mut runner = TestRunner::deterministic();
    let strategy = datagram();
    let (mut sent, mut replies) = (0, 0);
    let mut buf = vec![0u8; 70_000];
    for batch in 0..30 {
        for i in 0..50 {
            let p = strategy.new_tree(&mut runner).unwrap().current();
            clients[i % clients.len()].send_to(&p, server).unwrap();
            sent += 1;
        }
        for c in &clients {
            while let Ok((n, _)) = c.recv_from(&mut buf) {
                replies += 1;
                if let Err(e) = well_formed(&buf[..n], 1468) {
                    panic!("batch {batch}: {e}");
                }
            }
        }
        assert!(!thread.is_finished(), "the server stopped after {sent} datagrams");
    }
    assert!(
        replies > 100,
        "the hostile requests were answered too ({replies} replies)"
    );

    // Still serving: a clean RRQ from a new client gets the whole file.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(&encode(1, &["ipxe.efi", "octet"]), server).unwrap();
    let mut got = Vec::new();
    loop {
        let (n, from) = c.recv_from(&mut buf).expect("a DATA block");
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), 3, "{:?}", &buf[..n.min(40)]);
        got.extend_from_slice(&buf[4..n]);
        c.send_to(&[0, 4, buf[2], buf[3]], from).unwrap();
        if n - 4 < 512 {
            break;
        }
    }
    assert_eq!(got, file);
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
}
