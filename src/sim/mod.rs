//! # `wwsim`: simulated nodes that boot against real heads
//!
//! A storm of thousands of nodes does not fit in VMs on a small machine, but the heads
//! cannot tell a VM from a task that sends the same packets. Each simulated node powers
//! on, gets a lease as a PXE ROM, fetches the iPXE binary over TFTP, gets a lease as
//! iPXE, runs the iPXE script the head serves (every download sent from its leased
//! address, falling back over the rack's heads as the script says), and then runs the
//! node agent's runtime-overlay refreshes — the protocol steps, retries and fallbacks of
//! iPXE and `wwclient`, without a kernel or an image ever being booted. See
//! [`node`] for the sequence and docs/OPERATIONS.md "wwsim" for how to run it.
//!
//! | part | job |
//! |---|---|
//! | [`dhcp`] | sans-IO DHCP client as a PXE ROM and iPXE speak it; one shared port 68 for all nodes |
//! | [`tftp`] | TFTP read client (RFC 1350/2347/2348/2349) |
//! | [`http`] | a GET from the node's leased address (a privileged port in secure mode), body hashed |
//! | [`script`] | the iPXE script language boot scripts use, interpreted without I/O |
//! | [`node`] | one node's boot and agent refreshes; the digest checks |
//! | [`report`] | per-node records and the summary line |
//!
//! Design notes:
//! - **One namespace, one DHCP socket, thousands of addresses.** Nodes share a UDP socket
//!   on port 68 and are told apart by `xid`/`chaddr`; each node's TCP and TFTP sockets are
//!   bound to the address it was leased, which the namespace treats as local through an
//!   AnyIP route (`ip route add local NET dev lo`): the kernel answers ARP for those
//!   addresses on the rack link and delivers the replies (docs/DECISIONS.md "wwsim").
//! - **Only inside a test namespace.** [`check_namespace`] refuses any network namespace
//!   not made with `ip netns add`: a simulated PXE storm on a real network would be an
//!   incident.
//! - **Bounded**: every wait has a deadline (the run's `--deadline` at the latest), every
//!   retry loop a count; a node that has not finished at the deadline is a failure.
//! - **Seeded**: `xid`s, start offsets and port choices come from `--seed`; the same seed
//!   gives the same packets (the heads' timing still varies).

pub mod dhcp;
pub mod http;
pub mod node;
pub mod report;
pub mod script;
pub mod tftp;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::dhcp::{DhcpPort, DoraError, Identity};
use self::node::{SimNode, Verifier};
use self::report::{NodeRecord, Summary};

/// Why a run could not start or a step failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("--{flag}: {why}")]
    Option { flag: &'static str, why: String },
    #[error(
        "refusing to run outside a named network namespace (interface {iface}): simulated PXE \
         clients must not broadcast on a real network. Run wwsim inside a test namespace made \
         with `ip netns add` (`ip netns exec NS wwsim --iface IF ...`), as the integration tests \
         and the chaos suite do"
    )]
    HostNamespace { iface: String },
    #[error("interface {iface}: {why}")]
    Iface { iface: String, why: String },
    #[error("DHCP port on {iface}: {why}")]
    Dhcp { iface: String, why: String },
    #[error(transparent)]
    Dora(#[from] DoraError),
    #[error("deadline passed during {0}")]
    Deadline(&'static str),
    #[error("the DHCP port was closed")]
    Stopped,
    #[error("writing {path}: {why}")]
    Write { path: PathBuf, why: String },
}

/// SplitMix64: a small seeded generator (xids, start offsets, ports). Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `wwsim`'s command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "wwsim",
    version,
    about = "Simulated PXE/iPXE/wwclient nodes booting against real wulfd heads (inside a network namespace only)"
)]
pub struct Args {
    /// The rack link to boot on (required: there is no default interface). wwsim runs
    /// only inside a namespace made with `ip netns add`.
    #[arg(long)]
    pub iface: String,
    /// MAC of the first node; the others count up from it.
    #[arg(long)]
    pub macs: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Nodes booting at once (a booted node's agent does not count).
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Seed for xids, start offsets and ports (printed in the summary).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Runtime-overlay fetches of each node's agent after boot (the first at once).
    #[arg(long, default_value_t = 2)]
    pub refreshes: u32,
    /// The agent stops at its first served refresh, as a node that reached the runtime
    /// stage: `--refreshes` then bounds the failed cycles before it (wwclient itself
    /// retries every interval), and a node is ok once one was served.
    #[arg(long)]
    pub until_served: bool,
    /// Between refreshes (default: the interval in the node's wwclient.conf).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Seconds the whole run may take; a node not finished by then has failed.
    #[arg(long, default_value_t = 300)]
    pub deadline: u64,
    /// Power-on times spread uniformly over this (0: all at once).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub ramp: Duration,
    /// Boots started again after a failed one (a node reboots from its ROM).
    #[arg(long, default_value_t = 3)]
    pub reboots: u32,
    /// DHCP waits after each transmission (iPXE: 1s,2s,4s,8s).
    #[arg(long, default_value = "1s,2s,4s,8s")]
    pub dhcp_schedule: String,
    /// TFTP blksize asked for (iPXE: 1432; 0: no options).
    #[arg(long, default_value_t = 1432)]
    pub tftp_blksize: u16,
    /// Longest wait for one HTTP download of the boot (iPXE has none; a bound is needed).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub http_timeout: Duration,
    /// Do not check served bytes against their digests (saves CPU in big storms).
    #[arg(long)]
    pub no_verify: bool,
    /// Write every node's record and the summary here (JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Print a progress line on stderr this often.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub progress: Option<Duration>,
}

/// A run, checked.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub iface: String,
    pub first_mac: [u8; 6],
    pub count: u32,
    pub concurrency: usize,
    pub seed: u64,
    pub refreshes: u32,
    pub until_served: bool,
    pub interval: Option<Duration>,
    pub deadline: Duration,
    pub ramp: Duration,
    pub reboots: u32,
    pub dhcp_schedule: Vec<Duration>,
    pub tftp: tftp::TftpOptions,
    pub http_timeout: Duration,
    pub verify: bool,
    pub json: Option<PathBuf>,
    pub progress: Option<Duration>,
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

/// The MAC `i` places after `first`.
pub fn nth_mac(first: [u8; 6], i: u32) -> [u8; 6] {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&first);
    let v = u64::from_be_bytes(b) + u64::from(i);
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

impl TryFrom<Args> for SimOptions {
    type Error = SimError;

    fn try_from(a: Args) -> Result<SimOptions, SimError> {
        let bad = |flag, why: String| Err(SimError::Option { flag, why });
        if a.iface.is_empty() || a.iface.contains('/') || a.iface == "lo" {
            return bad("iface", format!("{:?} is not a rack link", a.iface));
        }
        let Some(first_mac) = parse_mac(&a.macs) else {
            return bad("macs", format!("{:?} is not a MAC address (aa:bb:cc:dd:ee:ff)", a.macs));
        };
        if first_mac[0] & 1 == 1 {
            return bad(
                "macs",
                format!("{} is a multicast address; nodes need unicast MACs", a.macs),
            );
        }
        if a.count == 0 || a.count > 1_000_000 {
            return bad("count", format!("{} is outside 1..=1000000", a.count));
        }
        // At most 1e6 nodes: only the first byte can carry, into a multicast address.
        let last = u64::from_be_bytes([
            0,
            0,
            first_mac[0],
            first_mac[1],
            first_mac[2],
            first_mac[3],
            first_mac[4],
            first_mac[5],
        ]) + u64::from(a.count - 1);
        if last >= 1 << 48 || nth_mac(first_mac, a.count - 1)[0] & 1 == 1 {
            return bad(
                "count",
                format!(
                    "{} MACs from {} run into multicast addresses; start lower",
                    a.count, a.macs
                ),
            );
        }
        if a.concurrency == 0 {
            return bad("concurrency", "must be at least 1".into());
        }
        if a.deadline == 0 || a.deadline > 86_400 {
            return bad("deadline", format!("{} s is outside 1..=86400", a.deadline));
        }
        let mut schedule = Vec::new();
        for part in a.dhcp_schedule.split(',') {
            match humantime::parse_duration(part.trim()) {
                Ok(d) if !d.is_zero() && d <= Duration::from_secs(120) => schedule.push(d),
                _ => return bad("dhcp-schedule", format!("{part:?} is not a duration in (0, 120s]")),
            }
        }
        if schedule.is_empty() || schedule.len() > 16 {
            return bad("dhcp-schedule", "give 1 to 16 waits, e.g. 1s,2s,4s,8s".into());
        }
        if a.tftp_blksize != 0 && !(8..=65464).contains(&a.tftp_blksize) {
            return bad(
                "tftp-blksize",
                format!("{} is outside RFC 2348's 8..=65464", a.tftp_blksize),
            );
        }
        if a.http_timeout.is_zero() {
            return bad("http-timeout", "must be more than 0".into());
        }
        if a.interval.is_some_and(|d| d.is_zero()) {
            return bad("interval", "must be more than 0".into());
        }
        if a.progress.is_some_and(|d| d < Duration::from_millis(100)) {
            return bad("progress", "at least 100ms".into());
        }
        if a.refreshes > 10_000 {
            return bad("refreshes", format!("{} is more than 10000", a.refreshes));
        }
        Ok(SimOptions {
            iface: a.iface,
            first_mac,
            count: a.count,
            concurrency: a.concurrency,
            seed: a.seed,
            refreshes: a.refreshes,
            until_served: a.until_served,
            interval: a.interval,
            deadline: Duration::from_secs(a.deadline),
            ramp: a.ramp,
            reboots: a.reboots.min(100),
            dhcp_schedule: schedule,
            tftp: tftp::TftpOptions {
                blksize: a.tftp_blksize,
                ..Default::default()
            },
            http_timeout: a.http_timeout,
            verify: !a.no_verify,
            json: a.json,
            progress: a.progress,
        })
    }
}

/// Run only inside a named network namespace (one made with `ip netns add`, which is
/// how the tests and the chaos suite make their racks), and only on an interface that is
/// there. A named namespace is recognised by its file under `/run/netns` being this
/// process's namespace (same nsfs inode); comparing with PID 1's namespace instead needs
/// ptrace rights on PID 1, which a container's root may lack.
pub fn check_namespace(iface: &str) -> Result<(), SimError> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self/ns/net").map_err(|e| SimError::Iface {
        iface: iface.to_owned(),
        why: format!("cannot read this process's network namespace: {e}"),
    })?;
    let named = ["/run/netns", "/var/run/netns"].iter().any(|dir| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino()))
    });
    if !named {
        return Err(SimError::HostNamespace {
            iface: iface.to_owned(),
        });
    }
    if !std::path::Path::new("/sys/class/net").join(iface).exists() {
        return Err(SimError::Iface {
            iface: iface.to_owned(),
            why: "no such interface in this namespace (`ip link` lists them)".into(),
        });
    }
    Ok(())
}

/// Live counters, for progress lines.
#[derive(Debug, Default)]
pub struct Progress {
    pub started: AtomicU32,
    pub booted: AtomicU32,
    /// Booted, refreshed and verified.
    pub done: AtomicU32,
    pub failed: AtomicU32,
    pub refreshes: AtomicU32,
}

impl Progress {
    pub fn line(&self, t: Duration) -> String {
        let g = |a: &AtomicU32| a.load(Ordering::Relaxed);
        format!(
            "wwsim: {:.1} s: {} started, {} booted, {} done, {} failed, {} refreshes",
            t.as_secs_f64(),
            g(&self.started),
            g(&self.booted),
            g(&self.done),
            g(&self.failed),
            g(&self.refreshes)
        )
    }
}

/// What every node of a run shares.
#[derive(Debug)]
pub struct Env {
    pub opts: SimOptions,
    pub dhcp: DhcpPort,
    pub verify: Verifier,
    pub progress: Progress,
    /// The run's end: no wait of any node goes past it.
    pub deadline: Instant,
}

/// A finished run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub summary: Summary,
    pub nodes: Vec<NodeRecord>,
}

/// Run the storm on `opts.iface` (checked with [`check_namespace`]).
pub async fn run(opts: SimOptions) -> Result<Report, SimError> {
    check_namespace(&opts.iface)?;
    let port = DhcpPort::bind(&opts.iface)?;
    Ok(run_on(opts, port).await)
}

/// Run the storm with a DHCP port the caller made.
pub async fn run_on(opts: SimOptions, port: DhcpPort) -> Report {
    let t0 = Instant::now();
    let rcvbuf_before = report::udp_rcvbuf_errors();
    let env = Arc::new(Env {
        deadline: t0 + opts.deadline,
        opts,
        dhcp: port,
        verify: Verifier::default(),
        progress: Progress::default(),
    });
    let progress = env.opts.progress.map(|every| {
        let env = env.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
            // Bounded by the run: aborted when it ends.
            loop {
                tick.tick().await;
                eprintln!("{}", env.progress.line(t0.elapsed()));
            }
        })
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(env.opts.concurrency));
    let mut seeds = Rng::new(env.opts.seed);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..env.opts.count {
        let mac = nth_mac(env.opts.first_mac, i);
        let mut rng = Rng::new(seeds.next_u64());
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
        uuid[8..].copy_from_slice(&rng.next_u64().to_be_bytes());
        let start = t0 + env.opts.ramp.mul_f64(rng.unit());
        let n = SimNode {
            index: i,
            id: Identity { mac, uuid },
            rng,
        };
        let (env, permits) = (env.clone(), permits.clone());
        set.spawn(async move {
            let mut rec = NodeRecord {
                mac: n.mac_text(),
                ..Default::default()
            };
            tokio::time::sleep_until(start.min(env.deadline).into()).await;
            let permit = tokio::time::timeout_at(env.deadline.into(), permits.acquire_owned()).await;
            match permit {
                Ok(Ok(p)) => {
                    rec.started_at = t0.elapsed().as_secs_f64();
                    env.progress.started.fetch_add(1, Ordering::Relaxed);
                    node::run_node(env.clone(), n, &mut rec, p).await;
                }
                _ => rec.error = Some("the deadline passed before this node could power on".into()),
            }
            (i, rec)
        });
    }
    let mut records: Vec<Option<NodeRecord>> = vec![None; env.opts.count as usize];
    // Bounded: every node task ends by the deadline; the margin covers the last writes.
    let hard_stop = env.deadline + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(hard_stop.into(), set.join_next()).await {
            Ok(Some(Ok((i, rec)))) => records[i as usize] = Some(rec),
            Ok(Some(Err(e))) => tracing::error!("a node task failed: {e}"),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!("{}", env.progress.line(t0.elapsed()));
    }
    let mut nodes: Vec<NodeRecord> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| NodeRecord {
                mac: crate::boot::dhcp::MacAddr(nth_mac(env.opts.first_mac, i as u32)).to_string(),
                error: Some("did not finish by the deadline".into()),
                ..Default::default()
            })
        })
        .collect();
    let mut summary = report::summarize(&mut nodes, t0.elapsed(), env.opts.seed);
    let st = &env.dhcp.stats;
    summary.dhcp_port = report::PortCounts {
        sent: st.sent.load(Ordering::Relaxed),
        received: st.received.load(Ordering::Relaxed),
        unmatched: st.unmatched.load(Ordering::Relaxed),
        overflow: st.overflow.load(Ordering::Relaxed),
        udp_rcvbuf_errors: report::udp_rcvbuf_errors()
            .zip(rcvbuf_before)
            .map(|(a, b)| a.saturating_sub(b))
            .unwrap_or(0),
    };
    (summary.sim_cpu_secs, summary.sim_peak_rss_mib) = report::own_usage();
    Report { summary, nodes }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `--iface c0 --macs 02:00:00:00:00:fe` unless `extra` gives them.
    fn args(extra: &[&str]) -> Result<SimOptions, SimError> {
        let mut v = vec!["wwsim"];
        for (flag, default) in [("--iface", "c0"), ("--macs", "02:00:00:00:00:fe")] {
            if !extra.contains(&flag) {
                v.extend([flag, default]);
            }
        }
        v.extend_from_slice(extra);
        SimOptions::try_from(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn options_are_checked_once() {
        let o = args(&["--count", "3", "--interval", "2s"]).unwrap();
        assert_eq!(o.first_mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(o.dhcp_schedule.len(), 4);
        assert_eq!(o.interval, Some(Duration::from_secs(2)));
        assert!(o.verify);
        for (extra, flag) in [
            (&["--macs", "01:00:5e:00:00:01"][..], "macs"),
            (&["--macs", "zz"][..], "macs"),
            (&["--count", "0"][..], "count"),
            (&["--macs", "fe:ff:ff:ff:ff:fe", "--count", "3"][..], "count"),
            (&["--dhcp-schedule", "1s,0s"][..], "dhcp-schedule"),
            (&["--tftp-blksize", "4"][..], "tftp-blksize"),
            (&["--iface", "lo"][..], "iface"),
        ] {
            match args(extra) {
                Err(SimError::Option { flag: f, .. }) => assert_eq!(f, flag, "{extra:?}"),
                other => panic!("{extra:?}: {other:?}"),
            }
        }
        // An interface is required: there is no default.
        assert!(Args::try_parse_from(["wwsim", "--macs", "02:00:00:00:00:01"]).is_err());
    }

    #[test]
    fn the_namespace_the_tests_run_in_is_refused() {
        // cargo runs tests where it was started: not in a namespace made by `ip netns add`.
        let e = check_namespace("lo").unwrap_err();
        assert!(matches!(e, SimError::HostNamespace { .. }), "{e}");
        assert!(e.to_string().contains("ip netns add"), "{e}");
    }

    #[test]
    fn macs_count_up_across_bytes() {
        assert_eq!(nth_mac([2, 0, 0, 0, 0, 0xff], 1), [2, 0, 0, 0, 1, 0]);
        assert_eq!(nth_mac([2, 0, 0, 0, 0xff, 0xff], 2), [2, 0, 0, 1, 0, 1]);
        assert_eq!(parse_mac("02-00-00-00-00-0A"), Some([2, 0, 0, 0, 0, 10]));
    }

    #[test]
    fn the_generator_is_seeded() {
        let a: Vec<u64> = (0..3)
            .map({
                let mut r = Rng::new(5);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..3)
            .map({
                let mut r = Rng::new(5);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        let mut r = Rng::new(9);
        assert!((0..1000).map(|_| r.unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
