//! A DHCP lab shared by the DHCP integration tests and `benches/dhcp.rs`: known nodes
//! as a [`BootView`], wulfpack's DHCP server running inside a [`NetNs`], perfdhcp runs
//! with their parsed report, and a Kea configuration for the same nodes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use wulfpack::boot::dhcp::{self, DhcpConfig, DhcpServer, LeaseAllocator, MemoryAllocator, Stats};
use wulfpack::boot::view::{BootView, ViewRx};
use wulfpack::model::{NetDev, NodeConf, NodesConf};
use wulfpack::state::{Command, Request, State};

use super::netns::NetNs;

/// A known node: name, MAC, IPv4 address.
#[derive(Debug, Clone)]
pub struct LabNode {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

/// `n` nodes with MACs `52:54:00:xx:xx:xx` and addresses `base + 1 + i`.
pub fn nodes(n: usize, base: Ipv4Addr) -> Vec<LabNode> {
    (0..n)
        .map(|i| LabNode {
            name: format!("n{i:05}"),
            mac: format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            ),
            ip: Ipv4Addr::from(u32::from(base) + 1 + i as u32),
        })
        .collect()
}

/// A view holding `nodes` (each with one device `default`) and their `tags`.
pub fn view_of(nodes: &[LabNode], tags: &[(&str, &str)]) -> BootView {
    let mut conf = NodesConf::default();
    for n in nodes {
        let mut c = NodeConf::default();
        c.network_devices.insert(
            "default".into(),
            NetDev {
                hwaddr: Some(n.mac.clone()),
                ipaddr: Some(n.ip.to_string()),
                device: Some("eth0".into()),
                ..Default::default()
            },
        );
        c.tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        conf.nodes.insert(n.name.clone(), c);
    }
    let mut st = State::default();
    let r = st.apply(
        1,
        &Request {
            audit: None,
            id: None,
            cmd: Command::Import { conf },
        },
    );
    assert!(r.0.is_ok(), "{r:?}");
    BootView::from_state(&st, 1)
}

/// wulfpack's DHCP server on one interface of a namespace, on its own thread and
/// current-thread tokio runtime (one core, like a head's DHCP task). Stops on drop.
pub struct LabServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
    pub stats: Arc<Stats>,
}

impl LabServer {
    /// Bind `iface` in `ns` (port 67, `SO_BINDTODEVICE`) and serve a fixed view with an
    /// in-memory allocator; returns once bound.
    pub fn start(ns: &NetNs, iface: &str, cfg: DhcpConfig, view: BootView) -> LabServer {
        let (vtx, vrx) = watch::channel(Arc::new(view));
        // The sender may go: the receiver keeps the last view.
        drop(vtx);
        Self::start_with(ns, iface, cfg, vrx, Arc::new(MemoryAllocator::new()))
    }

    /// Like [`LabServer::start`] with a live view and any allocator (a head's).
    pub fn start_with(
        ns: &NetNs,
        iface: &str,
        cfg: DhcpConfig,
        vrx: ViewRx,
        leases: Arc<dyn LeaseAllocator>,
    ) -> LabServer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let iface = iface.to_owned();
        let server = Self::spawn(ns, move |stats, stopped| async move {
            let sock = match dhcp::bind_interface(&iface, 67) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            let _ = ready_tx.send(Ok(()));
            DhcpServer {
                stats,
                ..DhcpServer::new(cfg, vrx, leases)
            }
            .run_on(sock, &iface, stopped)
            .await
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("DHCP server did not start: {e}"),
            Err(e) => panic!("DHCP server did not start: {e}"),
        }
        server
    }

    /// The production entry point ([`DhcpServer::run`]): every interface of `cfg`,
    /// each bound (and re-bound) by the server itself, a fixed view, an in-memory
    /// allocator. Returns at once; interfaces come up as they exist.
    pub fn start_supervised(ns: &NetNs, cfg: DhcpConfig, view: BootView) -> LabServer {
        let (vtx, vrx) = watch::channel(Arc::new(view));
        drop(vtx);
        Self::spawn(ns, move |stats, stopped| {
            DhcpServer {
                stats,
                ..DhcpServer::new(cfg, vrx, Arc::new(MemoryAllocator::new()))
            }
            .run(stopped)
        })
    }

    /// Runs `serve(this server's counters, stop signal)` on a
    /// current-thread runtime on a thread inside `ns`.
    fn spawn<F, Fut>(ns: &NetNs, serve: F) -> LabServer
    where
        F: FnOnce(Arc<Stats>, std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), dhcp::DhcpError>>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let stats: Arc<Stats> = Arc::default();
        let counters = stats.clone();
        let thread = ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let stopped = Box::pin(async move {
                let _ = stopped.await;
            });
            rt.block_on(serve(counters, stopped)).map_err(|e| e.to_string())
        });
        LabServer {
            stop: Some(stop),
            thread: Some(thread),
            stats,
        }
    }

    /// Stop and join; panics if the server failed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("DHCP server failed: {e}"),
                Err(_) => panic!("DHCP server thread panicked"),
            }
        }
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The figures of one perfdhcp run (DORA exchanges).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Perf {
    pub sent_discover: u64,
    pub recv_offer: u64,
    pub sent_request: u64,
    pub recv_ack: u64,
    /// Exchanges per second perfdhcp reports ("Rate: N 4-way exchanges/second").
    pub rate: f64,
    /// CPU seconds perfdhcp used (user + system).
    pub client_cpu: f64,
    /// UDP datagrams the client namespace's kernel dropped for lack of receive buffer
    /// during the run (replies perfdhcp did not read in time).
    pub client_rcvbuf_drops: u64,
    pub raw: String,
}

impl Perf {
    /// Lost exchanges (DISCOVERs without OFFER plus REQUESTs without ACK), in percent of
    /// what was sent.
    pub fn drop_pct(&self) -> f64 {
        let sent = self.sent_discover + self.sent_request;
        if sent == 0 {
            return 100.0;
        }
        let lost = self.sent_discover.saturating_sub(self.recv_offer) + self.sent_request.saturating_sub(self.recv_ack);
        100.0 * lost as f64 / sent as f64
    }
}

/// Parse perfdhcp's final report.
pub fn parse_perfdhcp(out: &str) -> Perf {
    let mut p = Perf {
        raw: out.to_owned(),
        ..Default::default()
    };
    let num = |l: &str| -> u64 {
        l.rsplit(':')
            .next()
            .and_then(|x| x.split_whitespace().next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    // Sections: "***Statistics for: DISCOVER-OFFER***" then "REQUEST-ACK".
    let mut section = "";
    for line in out.lines() {
        let l = line.trim();
        if l.contains("Statistics for: DISCOVER-OFFER") {
            section = "do";
        } else if l.contains("Statistics for: REQUEST-ACK") {
            section = "ra";
        } else if let Some(r) = l.strip_prefix("Rate:") {
            if let Some(x) = r.split_whitespace().next().and_then(|x| x.parse().ok()) {
                p.rate = x;
            }
        } else if l.starts_with("sent packets:") {
            match section {
                "do" => p.sent_discover = num(l),
                "ra" => p.sent_request = num(l),
                _ => {}
            }
        } else if l.starts_with("received packets:") {
            match section {
                "do" => p.recv_offer = num(l),
                "ra" => p.recv_ack = num(l),
                _ => {}
            }
        }
    }
    p
}

/// Write the MAC list perfdhcp's `-M` reads.
pub fn write_macs(path: &std::path::Path, nodes: &[LabNode]) {
    let text: String = nodes.iter().map(|n| format!("{}\n", n.mac)).collect();
    std::fs::write(path, text).unwrap();
}

/// `Udp: RcvbufErrors` of a namespace (`/proc/net/snmp` is per network namespace).
pub fn udp_rcvbuf_errors(ns: &NetNs) -> u64 {
    let snmp = ns.ok("cat /proc/net/snmp");
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let (Some(h), Some(v)) = (udp.first(), udp.get(1)) else {
        return 0;
    };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .find(|(k, _)| *k == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Run perfdhcp inside `ns` against `server` from `iface`: `rate` exchanges/s for
/// `secs` seconds, `n` clients: the MACs in `macs`, or without a list `n` random MACs
/// (perfdhcp's `-R`). `WULFPACK_PERFDHCP_ARGS` adds options (e.g. `-g multi`). Bounded
/// by `timeout`.
pub fn perfdhcp(
    ns: &NetNs,
    iface: &str,
    server: Ipv4Addr,
    rate: u32,
    secs: u32,
    macs: Option<&std::path::Path>,
    n: usize,
) -> Perf {
    let list = macs.map(|m| format!("-M {}", m.display())).unwrap_or_default();
    let extra = std::env::var("WULFPACK_PERFDHCP_ARGS").unwrap_or_default();
    // After perfdhcp exits, the shell's own /proc stat holds its children's CPU time.
    let script = format!(
        "timeout {} perfdhcp -4 -l {iface} -r {rate} -R {n} -p {secs} {list} {extra} {server} 2>&1; echo; echo \"CHILDSTAT $(cat /proc/$$/stat)\"",
        secs + 30,
    );
    let drops0 = udp_rcvbuf_errors(ns);
    let o = ns.sh(&script);
    let out = String::from_utf8_lossy(&o.stdout);
    let mut p = parse_perfdhcp(&out);
    p.client_rcvbuf_drops = udp_rcvbuf_errors(ns).saturating_sub(drops0);
    if let Some(stat) = out.lines().find_map(|l| l.strip_prefix("CHILDSTAT ")) {
        // cutime and cstime are fields 16 and 17: 13 and 14 after the ")" ending the name.
        let f: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        p.client_cpu = (t(13) + t(14)) / 100.0;
    }
    p
}

/// A Kea 2.2 configuration serving `nodes` by reservation on `iface` (memfile, no
/// persistence), as a like-for-like baseline.
pub fn kea_config(iface: &str, network: &str, router: Ipv4Addr, nodes: &[LabNode], dir: &std::path::Path) -> String {
    let reservations: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| serde_json::json!({"hw-address": n.mac, "ip-address": n.ip.to_string(), "hostname": n.name}))
        .collect();
    kea_json(
        iface,
        network,
        router,
        7200,
        dir,
        serde_json::json!({"reservations": reservations}),
        serde_json::json!({"host-reservation-identifiers": ["hw-address"]}),
    )
}

/// A Kea 2.2 configuration serving the dynamic pool `first - last` on `iface` (memfile,
/// no persistence, lease time `lease_secs`): the anchor for wulfpack's pool.
pub fn kea_pool_config(
    iface: &str,
    network: &str,
    first: Ipv4Addr,
    last: Ipv4Addr,
    router: Ipv4Addr,
    lease_secs: u32,
    dir: &std::path::Path,
) -> String {
    kea_json(
        iface,
        network,
        router,
        lease_secs,
        dir,
        serde_json::json!({"pools": [{"pool": format!("{first} - {last}")}]}),
        serde_json::json!({}),
    )
}

/// The Kea configuration both baselines share, plus their subnet and top-level keys.
fn kea_json(
    iface: &str,
    network: &str,
    router: Ipv4Addr,
    lease_secs: u32,
    dir: &std::path::Path,
    subnet_extra: serde_json::Value,
    dhcp4_extra: serde_json::Value,
) -> String {
    let mut subnet = serde_json::json!({
        "id": 1,
        "subnet": network,
        "option-data": [{"name": "routers", "data": router.to_string()}],
    });
    let mut dhcp4 = serde_json::json!({
        "interfaces-config": {"interfaces": [iface], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "memfile", "persist": false},
        "valid-lifetime": lease_secs,
        "loggers": [{
            "name": "kea-dhcp4",
            "severity": "WARN",
            "output_options": [{"output": dir.join("kea.log").display().to_string()}],
        }],
    });
    let merge = |into: &mut serde_json::Value, from: serde_json::Value| {
        if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
            a.extend(b);
        }
    };
    merge(&mut subnet, subnet_extra);
    merge(&mut dhcp4, dhcp4_extra);
    dhcp4["subnet4"] = serde_json::json!([subnet]);
    serde_json::json!({ "Dhcp4": dhcp4 }).to_string()
}
