//! A raw TFTP client that negotiates `windowsize` (RFC 7440), which neither tftp-hpa's
//! `tftp` nor curl speaks: used by the TFTP tests and the `boot_serve` benchmark.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// RRQ with blksize, tsize, timeout (RFC 2349: 3 s) and windowsize (RFC 7440); ACK
/// the last block of each window.
pub fn raw_fetch(
    server: SocketAddr,
    file: &str,
    blksize: usize,
    window: u16,
) -> Result<(Vec<u8>, HashMap<String, String>), String> {
    let mut data = Vec::new();
    let oack = raw_fetch_into(server, file, blksize, window, &mut |b| data.extend_from_slice(b))?;
    Ok((data, oack))
}

/// [`raw_fetch`] handing each block's data to `sink` (a benchmark keeps nothing).
pub fn raw_fetch_into(
    server: SocketAddr,
    file: &str,
    blksize: usize,
    window: u16,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<HashMap<String, String>, String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rrq = vec![0u8, 1];
    for s in [
        file,
        "octet",
        "blksize",
        &blksize.to_string(),
        "tsize",
        "0",
        "timeout",
        "3",
        "windowsize",
        &window.to_string(),
    ] {
        rrq.extend_from_slice(s.as_bytes());
        rrq.push(0);
    }
    sock.send_to(&rrq, server).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65536];
    let (n, tid) = sock.recv_from(&mut buf).map_err(|e| format!("no OACK: {e}"))?;
    if buf[..2] != [0, 6] {
        return Err(format!("expected OACK, got {:?}", &buf[..n.min(40)]));
    }
    let fields: Vec<String> = buf[2..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).to_lowercase())
        .collect();
    let oack: HashMap<String, String> = fields.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect();
    let win: u16 = oack.get("windowsize").and_then(|w| w.parse().ok()).unwrap_or(1);
    let bs: usize = oack.get("blksize").and_then(|w| w.parse().ok()).unwrap_or(512);
    let ack = |block: u16| sock.send_to(&[0, 4, (block >> 8) as u8, block as u8], tid);
    ack(0).map_err(|e| e.to_string())?;
    let (mut last, mut in_window) = (0u16, 0u16);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("data stalled: {e}"))?;
        if from != tid || n < 4 {
            continue;
        }
        if buf[..2] == [0, 5] {
            return Err(format!("server error: {}", String::from_utf8_lossy(&buf[4..n])));
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block != last.wrapping_add(1) {
            // Lost or duplicate: re-acknowledge what we have (RFC 7440 §4).
            ack(last).map_err(|e| e.to_string())?;
            in_window = 0;
            continue;
        }
        sink(&buf[4..n]);
        last = block;
        in_window += 1;
        let end = n - 4 < bs;
        if end || in_window == win {
            ack(last).map_err(|e| e.to_string())?;
            in_window = 0;
        }
        if end {
            return Ok(oack);
        }
    }
    Err("transfer took over 120 s".into())
}
