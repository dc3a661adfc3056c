//! What the clients do during a scenario, and what they saw.
//!
//! - **Registers:** `clients` concurrent clients (the admin API client `wwctl` uses, each
//!   preferring a different head, so writes go through followers and the leader) write
//!   unique values into the `comment` of nodes `reg0..regK` and read them back,
//!   linearizable reads unless a mutant asks for local ones. Every call and return is
//!   recorded for the checker (`lin.rs`).
//! - **Adds:** every client also adds nodes with unique names now and then; each one
//!   acknowledged must exist at the end (no acknowledged write lost).
//! - **DHCP:** a loop in a rack's client namespace runs DISCOVER/OFFER/REQUEST/ACK for a
//!   few unknown MACs, as a PXE ROM does (retransmitting every second with `secs`
//!   counting up), and records every ACK: no address may be ACKed to two MACs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wulfpack::client::Client;
use wulfpack::model::{NodeConf, PatchOp};
use wulfpack::pki::tls::Dialer;
use wulfpack::state::{Command, Kind, Query, Selector};

use crate::lin::{Op, OpKind};
use crate::rng::Rng;

/// How each client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Confirmed with a quorum (what `wwctl` does).
    Linearizable,
    /// Answered from the head's own state, each client pinned to one head (the
    /// stale-reads mutant: the checker must catch it).
    LocalPinned,
}

#[derive(Debug, Clone)]
pub struct WorkloadConf {
    pub heads: Vec<String>,
    /// Mutual TLS with the lab operator's credential.
    pub dialer: Dialer,
    pub clients: usize,
    pub registers: usize,
    pub reads: Reads,
    /// Deadline of one operation (the client's whole budget over heads and retries).
    pub op_deadline: Duration,
}

/// What the register and add clients saw.
#[derive(Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// Names of added nodes whose add was acknowledged, with the ack time (µs).
    pub acked_adds: Vec<(String, u64)>,
    /// Adds that failed (outcome unknown: they may exist or not).
    pub unknown_adds: usize,
    pub writes_ok: usize,
    pub writes_failed: usize,
    pub reads_ok: usize,
    pub reads_failed: usize,
}

pub fn register(i: usize) -> String {
    format!("reg{i}")
}

fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

fn set_comment(name: &str, v: &str) -> Command {
    Command::Patch {
        kind: Kind::Node,
        names: vec![name.to_owned()],
        patch: vec![PatchOp::Set {
            path: vec!["comment".into()],
            value: v.into(),
        }],
    }
}

/// Create the registers with their initial values (before any fault).
pub async fn setup(heads: &[String], dialer: &Dialer, registers: usize) -> Result<BTreeMap<String, String>, String> {
    let c = Client::with_dialer(heads.to_vec(), dialer).with_deadline(Duration::from_secs(20));
    let items: Vec<(String, NodeConf)> = (0..registers)
        .map(|i| {
            (
                register(i),
                NodeConf {
                    profiles: vec!["default".into()],
                    comment: Some("init".into()),
                    ..Default::default()
                },
            )
        })
        .collect();
    c.write(Command::Add {
        kind: Kind::Node,
        items,
    })
    .await
    .map_err(|e| format!("creating the registers: {e}"))?;
    Ok((0..registers).map(|i| (register(i), "init".to_owned())).collect())
}

/// Run the clients until `stop`; `t0` is the run's time origin.
pub async fn run(conf: WorkloadConf, mut rng: Rng, t0: Instant, stop: Arc<AtomicBool>) -> History {
    let mut tasks = Vec::new();
    for c in 0..conf.clients {
        // Client c prefers head c mod n; the local-reads mutant pins it there.
        let n = conf.heads.len();
        let heads: Vec<String> = match conf.reads {
            Reads::Linearizable => (0..n).map(|j| conf.heads[(c + j) % n].clone()).collect(),
            Reads::LocalPinned => vec![conf.heads[c % n].clone()],
        };
        let client = Client::with_dialer(heads, &conf.dialer).with_deadline(conf.op_deadline);
        let (conf, stop, mut rng) = (conf.clone(), stop.clone(), rng.fork());
        tasks.push(tokio::spawn(async move {
            let mut h = History::default();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = register(rng.range(0, conf.registers as u64 - 1) as usize);
                let roll = rng.range(0, 99);
                let call = micros(t0);
                if roll < 10 {
                    let name = format!("add-c{c}-{seq}");
                    let cmd = Command::Add {
                        kind: Kind::Node,
                        items: vec![(
                            name.clone(),
                            NodeConf {
                                profiles: vec!["default".into()],
                                ..Default::default()
                            },
                        )],
                    };
                    match client.write(cmd).await {
                        Ok(_) => h.acked_adds.push((name, micros(t0))),
                        Err(_) => h.unknown_adds += 1,
                    }
                } else if roll < 55 {
                    let v = format!("c{c}-{seq}");
                    let r = client.write(set_comment(&key, &v)).await;
                    let ok = r.is_ok();
                    if ok {
                        h.writes_ok += 1;
                    } else {
                        h.writes_failed += 1;
                    }
                    h.ops.push(Op {
                        client: c,
                        key,
                        kind: OpKind::Write(v),
                        call,
                        ret: ok.then(|| micros(t0)),
                    });
                } else {
                    let lin = conf.reads == Reads::Linearizable;
                    match client
                        .read(&Query::nodes(Selector::Names(vec![key.clone()])), lin)
                        .await
                    {
                        Ok(r) => {
                            h.reads_ok += 1;
                            let v = r.nodes.get(&key).and_then(|n| n.value.comment.clone());
                            h.ops.push(Op {
                                client: c,
                                key,
                                kind: OpKind::Read(v),
                                call,
                                ret: Some(micros(t0)),
                            });
                        }
                        Err(_) => h.reads_failed += 1,
                    }
                }
                // A little think time, so the clients do not saturate two cores.
                tokio::time::sleep(Duration::from_millis(rng.range(5, 40))).await;
            }
            h
        }));
    }
    let mut all = History::default();
    for t in tasks {
        if let Ok(h) = t.await {
            all.ops.extend(h.ops);
            all.acked_adds.extend(h.acked_adds);
            all.unknown_adds += h.unknown_adds;
            all.writes_ok += h.writes_ok;
            all.writes_failed += h.writes_failed;
            all.reads_ok += h.reads_ok;
            all.reads_failed += h.reads_failed;
        }
    }
    all
}

/// After healing: a final linearizable read of every register (recorded as ops, so the
/// checker sees the end state) and the names of every node that exists.
pub async fn final_reads(
    heads: &[String],
    dialer: &Dialer,
    registers: usize,
    t0: Instant,
) -> Result<(Vec<Op>, std::collections::BTreeSet<String>), String> {
    let c = Client::with_dialer(heads.to_vec(), dialer).with_deadline(Duration::from_secs(20));
    let call = micros(t0);
    let r = c
        .read(&Query::nodes(Selector::All), true)
        .await
        .map_err(|e| format!("final read: {e}"))?;
    let ret = micros(t0);
    let ops = (0..registers)
        .map(|i| Op {
            client: usize::MAX,
            key: register(i),
            kind: OpKind::Read(r.nodes.get(&register(i)).and_then(|n| n.value.comment.clone())),
            call,
            ret: Some(ret),
        })
        .collect();
    Ok((ops, r.nodes.keys().cloned().collect()))
}

/// One DHCP ACK a simulated PXE client got.
#[derive(Debug, Clone)]
pub struct Ack {
    pub mac: String,
    pub addr: Ipv4Addr,
    pub server: Ipv4Addr,
    pub at_us: u64,
}

#[derive(Debug, Default)]
pub struct DhcpLog {
    pub acks: Vec<Ack>,
    /// Exchanges that got no ACK within their deadline.
    pub timeouts: usize,
    /// The longest time any MAC went without an ACK while the loop ran, µs.
    pub longest_gap_us: u64,
}

/// PXE-like DORA for `macs` in turn on `iface` (run inside the client namespace) until
/// `stop`: each exchange retransmits its DISCOVER every second with `secs` counting up,
/// and gives up after `per_exchange`.
pub fn dhcp_loop(iface: &str, macs: &[String], t0: Instant, stop: &AtomicBool, per_exchange: Duration) -> DhcpLog {
    use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
    use dhcproto::{Decodable, Encodable};
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("udp socket");
    sock.set_reuse_address(true).unwrap();
    sock.set_broadcast(true).unwrap();
    sock.bind_device(Some(iface.as_bytes()))
        .expect("bind to the rack client link");
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())
        .expect("bind :68");
    let sock: std::net::UdpSocket = sock.into();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut log = DhcpLog::default();
    let mut last_ack: BTreeMap<String, u64> = macs.iter().map(|m| (m.clone(), 0)).collect();
    let mut xid = 0x4348_0000u32 | (std::process::id() & 0xfff);
    let mut buf = [0u8; 1500];
    'outer: while !stop.load(Ordering::Relaxed) {
        for mac in macs {
            if stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            xid = xid.wrapping_add(1);
            let hw: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
            let start = Instant::now();
            let msg = |kind: MessageType, secs: u16| {
                let u = Ipv4Addr::UNSPECIFIED;
                let mut m = Message::new_with_id(xid, u, u, u, u, &hw);
                m.set_flags(Flags::default().set_broadcast());
                m.set_secs(secs);
                m.opts_mut().insert(DhcpOption::MessageType(kind));
                m
            };
            let mut next_discover = Instant::now();
            let mut requested: Option<(Ipv4Addr, Ipv4Addr)> = None;
            let mut got = None;
            while start.elapsed() < per_exchange && got.is_none() {
                let secs = start.elapsed().as_secs() as u16;
                if Instant::now() >= next_discover {
                    // Like a PXE ROM: start over with a DISCOVER each second until ACKed.
                    requested = None;
                    let _ = sock.send_to(&msg(MessageType::Discover, secs).to_vec().unwrap(), to);
                    next_discover = Instant::now() + Duration::from_secs(1);
                }
                let Ok((n, _)) = sock.recv_from(&mut buf) else { continue };
                let Ok(m) = Message::from_bytes(&buf[..n]) else {
                    continue;
                };
                if m.xid() != xid {
                    continue;
                }
                let Some(DhcpOption::ServerIdentifier(server)) = m.opts().get(OptionCode::ServerIdentifier).cloned()
                else {
                    continue;
                };
                match m.opts().msg_type() {
                    Some(MessageType::Offer) if requested.is_none() => {
                        let mut r = msg(MessageType::Request, secs);
                        r.opts_mut().insert(DhcpOption::ServerIdentifier(server));
                        r.opts_mut().insert(DhcpOption::RequestedIpAddress(m.yiaddr()));
                        let _ = sock.send_to(&r.to_vec().unwrap(), to);
                        requested = Some((server, m.yiaddr()));
                    }
                    Some(MessageType::Ack) if requested.map(|r| r.0) == Some(server) => {
                        got = Some((m.yiaddr(), server));
                    }
                    Some(MessageType::Nak) => requested = None,
                    _ => {}
                }
            }
            let now = micros(t0);
            match got {
                Some((addr, server)) => {
                    let prev = last_ack.insert(mac.clone(), now).unwrap_or(0);
                    log.longest_gap_us = log.longest_gap_us.max(now.saturating_sub(prev));
                    log.acks.push(Ack {
                        mac: mac.clone(),
                        addr,
                        server,
                        at_us: now,
                    });
                }
                None => log.timeouts += 1,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    log
}
