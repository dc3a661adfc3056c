//! One simulated node, from power-on to its node agent's last refresh.
//!
//! 1. **PXE ROM**: DHCP ([`Firmware::PxeRom`]) for a boot file, then TFTP of that file (the
//!    iPXE binary) from `siaddr`, sent from the leased address.
//! 2. **iPXE**: DHCP again ([`Firmware::Ipxe`]), which answers with the script's URL; the
//!    URL's `${…}` expanded as iPXE does; the script fetched from that head and run
//!    ([`Script`]), each download sent from the leased address, every head the script
//!    lists tried in its order, up to `boot`.
//! 3. **wwclient**: the runtime overlay every interval from the heads in the
//!    `wwclient.conf` the system overlay carries (else the heads the script used), from a
//!    privileged port in secure mode, with `If-None-Match` after the first archive.
//!
//! A failed boot (no lease, a TFTP or script failure, a script that reboots) starts
//! again from the ROM, at most `reboots` times. Every served byte is checked where the
//! head says what it should be ([`Verifier`]); a mismatch fails the node.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use tokio::sync::OnceCell;

use super::dhcp::{Dora, Firmware, Identity, Lease};
use super::http::{self, Fetched, From, Get, PortCursor};
use super::report::{NodeRecord, RefreshRecord, StageRecord};
use super::script::{Op, Script};
use super::{tftp, Env, Rng};
use crate::agent::config::{Config as AgentConfig, Head};
use crate::model::Digest;
use crate::overlay::archive::{self, Limits};

/// What iPXE says it is (the heads log it).
const IPXE_AGENT: &str = "iPXE/1.21.1+ (wwsim)";
/// Largest overlay kept in memory to be checked and read.
const MAX_OVERLAY: u64 = 256 << 20;

/// A simulated machine.
#[derive(Debug, Clone)]
pub struct SimNode {
    pub index: u32,
    pub id: Identity,
    pub rng: Rng,
}

impl SimNode {
    /// `aa:bb:…`, the form the heads and `wwid=` use.
    pub fn mac_text(&self) -> String {
        crate::boot::dhcp::MacAddr(self.id.mac).to_string()
    }

    /// The SMBIOS UUID as iPXE's `${uuid}` prints it.
    pub fn uuid_text(&self) -> String {
        let u = self.id.uuid;
        let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

/// A head's digest of an iPXE binary, fetched once: by (head, HTTP port, file).
type EfiReferences = Mutex<HashMap<(Ipv4Addr, u16, String), Arc<OnceCell<Option<Digest>>>>>;

/// References every served byte is checked against, shared by all nodes of a run.
#[derive(Debug, Default)]
pub struct Verifier {
    /// The digest a head gives for an iPXE binary (`/efiboot/{file}`'s ETag), by
    /// (head, HTTP port, file); None when the head does not serve that route.
    efi: EfiReferences,
    /// First digest seen per TFTP file, where no head gave one.
    first: Mutex<HashMap<String, Digest>>,
    /// Overlay ETags ("equal keys, equal bytes") and the digest first served under each.
    etags: Mutex<HashMap<String, Digest>>,
}

impl Verifier {
    /// `Err(expected)` when `got` differs from what was first served under `etag`.
    fn same_as_before(map: &Mutex<HashMap<String, Digest>>, key: &str, got: Digest) -> Result<(), Digest> {
        let mut m = map.lock().expect("verifier");
        match m.get(key) {
            Some(&d) if d != got => Err(d),
            Some(_) => Ok(()),
            None => {
                m.insert(key.to_owned(), got);
                Ok(())
            }
        }
    }

    /// Check an overlay archive: its gzip CRC and cpio structure, and that its ETag
    /// always came with the same bytes.
    pub fn overlay(&self, what: &str, f: &Fetched) -> Result<(), String> {
        let body = f.body.as_deref().unwrap_or_default();
        archive::read(body, &Limits::default())
            .map_err(|e| format!("{what} from {}: not a valid archive: {e}", f.authority))?;
        if let Some(tag) = &f.etag {
            Self::same_as_before(&self.etags, tag, f.digest).map_err(|d| {
                format!(
                    "{what} from {}: ETag {tag} came with {} before and {} now",
                    f.authority, d, f.digest
                )
            })?;
        }
        Ok(())
    }

    /// Check a download that names its digest (CAS blobs: kernels, images).
    pub fn blob(what: &str, f: &Fetched) -> Result<(), String> {
        match f.etag_digest() {
            Some(d) if d != f.digest => Err(format!(
                "{what} from {}: received {} but the ETag says {d}",
                f.authority, f.digest
            )),
            _ => Ok(()),
        }
    }
}

/// What a booted node keeps for its agent.
#[derive(Debug, Clone)]
pub struct Booted {
    pub addr: Ipv4Addr,
    pub agent: AgentConfig,
    /// Where the agent's config came from (`wwclient.conf` or the script's heads).
    pub agent_from: &'static str,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One DHCP exchange on the shared port.
async fn dora(env: &Env, n: &mut SimNode, fw: Firmware, rec: &mut NodeRecord) -> Result<Lease, String> {
    let t = Instant::now();
    let rng = &mut n.rng;
    let mut tx = env.dhcp.register(n.id.mac, || rng.next_u32());
    let mut d = Dora::new(n.id, fw, tx.xid, &env.opts.dhcp_schedule, t);
    let res = env.dhcp.exchange(&mut tx, &mut d, env.deadline).await;
    rec.retries.dhcp += d.retransmissions;
    let lease = res.map_err(|e| format!("{} DHCP: {e}", fw_name(fw)))?;
    rec.stages.insert(
        if fw == Firmware::PxeRom {
            "dhcp_rom"
        } else {
            "dhcp_ipxe"
        },
        StageRecord {
            ms: ms(t.elapsed()),
            head: lease.server.to_string(),
            bytes: 0,
        },
    );
    Ok(lease)
}

fn fw_name(fw: Firmware) -> &'static str {
    match fw {
        Firmware::PxeRom => "PXE ROM",
        Firmware::Ipxe => "iPXE",
    }
}

/// A UDP socket on the leased address (TFTP from the node's address).
fn udp_from(addr: Ipv4Addr) -> Result<tokio::net::UdpSocket, String> {
    let s = std::net::UdpSocket::bind(SocketAddr::from((addr, 0))).map_err(|e| {
        http::HttpError::Source {
            addr: SocketAddr::from((addr, 0)),
            why: e.to_string(),
        }
        .to_string()
    })?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::UdpSocket::from_std(s).map_err(|e| e.to_string())
}

/// The iPXE binary's reference digest from the head that served it over TFTP.
async fn efi_reference(env: &Env, head: Ipv4Addr, port: u16, file: &str, from: Ipv4Addr) -> Option<Digest> {
    let cell = env
        .verify
        .efi
        .lock()
        .expect("verifier")
        .entry((head, port, file.to_owned()))
        .or_default()
        .clone();
    *cell
        .get_or_init(|| async {
            let url = format!("http://{head}:{port}/efiboot/{file}");
            let req = Get {
                url: &url,
                method: Method::HEAD,
                user_agent: IPXE_AGENT,
                if_none_match: None,
                keep_body: None,
                timeout: env.opts.http_timeout,
            };
            let from = From {
                addr: from,
                privileged: false,
            };
            match http::get(&req, from, &mut PortCursor::new(0), env.deadline).await {
                Ok(f) if f.status == 200 => f.etag_digest(),
                _ => None,
            }
        })
        .await
}

/// The port of a head's HTTP URL (`http://host:port/...`), 80 when absent.
fn http_port(url: &str) -> u16 {
    url.parse::<hyper::Uri>().ok().and_then(|u| u.port_u16()).unwrap_or(80)
}

/// `http://host:port` of a URL.
fn base(url: &str) -> Option<String> {
    let u = url.parse::<hyper::Uri>().ok()?;
    Some(format!("http://{}", u.authority()?))
}

/// The stage key of a script download's `--name`.
fn stage_of(name: &str) -> Option<&'static str> {
    match name {
        "kernel" => Some("kernel"),
        "image" => Some("image"),
        "system" => Some("system"),
        "runtime" => Some("runtime"),
        _ => None,
    }
}

/// One boot from power-on to the script's `boot`.
async fn boot_once(env: &Env, n: &mut SimNode, rec: &mut NodeRecord) -> Result<Booted, String> {
    // 1. The PXE ROM: a lease and the iPXE binary.
    let rom = dora(env, n, Firmware::PxeRom, rec).await?;
    let file = rom.boot_file.clone().filter(|f| !f.contains("://")).ok_or_else(|| {
        format!(
            "the ACK from {} to the PXE ROM named no TFTP boot file ({:?}); check boot.dhcp.ipxe on the head",
            rom.server, rom.boot_file
        )
    })?;
    let t = Instant::now();
    let sock = udp_from(rom.addr)?;
    let tftp_from = SocketAddr::from((rom.next_server, 69));
    let got = tftp::read(&sock, tftp_from, &file, &env.opts.tftp, env.deadline).await;
    drop(sock);
    let tr = match got {
        Ok(tr) => tr,
        Err(e) => {
            if let tftp::TftpError::Timeout { sent, .. } = &e {
                rec.retries.tftp += sent.saturating_sub(1);
            }
            return Err(format!("TFTP: {e}"));
        }
    };
    rec.retries.tftp += tr.retransmissions;
    rec.stages.insert(
        "tftp",
        StageRecord {
            ms: ms(t.elapsed()),
            head: rom.next_server.to_string(),
            bytes: tr.bytes,
        },
    );

    // 2. iPXE: a lease with the script's URL, the script, its downloads.
    let ipxe = dora(env, n, Firmware::Ipxe, rec).await?;
    rec.address = Some(ipxe.addr);
    rec.hostname = ipxe.hostname.clone();
    let settings: BTreeMap<String, String> = [
        ("mac", n.mac_text()),
        ("uuid", n.uuid_text()),
        ("asset", String::new()),
        ("platform", "pcbios".into()),
        ("buildarch", "i386".into()),
        ("manufacturer", "wwsim".into()),
        ("ip", ipxe.addr.to_string()),
        ("next-server", ipxe.next_server.to_string()),
        ("hostname", ipxe.hostname.clone().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let expander = Script::new("", settings.clone());
    let url = ipxe
        .boot_file
        .as_deref()
        .filter(|f| f.starts_with("http://"))
        .map(|f| expander.expand(f))
        .ok_or_else(|| {
            format!(
                "the ACK from {} to iPXE gave no script URL ({:?}); the head did not see iPXE's option 77/175",
                ipxe.server, ipxe.boot_file
            )
        })?;
    let from = From {
        addr: ipxe.addr,
        privileged: false,
    };
    let mut ports = PortCursor::new(n.rng.next_u32() as u16);
    if env.opts.verify {
        let want = efi_reference(env, rom.next_server, http_port(&url), &file, ipxe.addr).await;
        rec.tftp_checked_against = Some(if want.is_some() { "head" } else { "first_seen" });
        let bad = match want {
            Some(d) if d != tr.digest => Some(d),
            Some(_) => None,
            None => Verifier::same_as_before(&env.verify.first, &file, tr.digest).err(),
        };
        if let Some(d) = bad {
            rec.digest_mismatches.push(format!(
                "{file} over TFTP from {}: received {} but the head serves {d}",
                rom.next_server, tr.digest
            ));
        }
    }
    let t = Instant::now();
    let req = Get {
        url: &url,
        method: Method::GET,
        user_agent: IPXE_AGENT,
        if_none_match: None,
        keep_body: Some(1 << 20),
        timeout: env.opts.http_timeout,
    };
    let script = http::get(&req, from, &mut ports, env.deadline)
        .await
        .map_err(|e| format!("iPXE script: {e}"))?;
    if script.status != 200 {
        return Err(format!("iPXE script {url}: {} {}", script.status, script.message));
    }
    rec.stages.insert(
        "script",
        StageRecord {
            ms: ms(t.elapsed()),
            head: script.authority.clone(),
            bytes: script.bytes,
        },
    );
    let text = String::from_utf8_lossy(script.body.as_deref().unwrap_or_default()).into_owned();
    if !text.starts_with("#!ipxe") {
        return Err(format!("{url} is not an iPXE script (no #!ipxe)"));
    }
    let mut script = Script::new(&text, settings);
    let mut first_try: HashMap<String, Instant> = HashMap::new();
    let mut heads_used: Vec<String> = Vec::new();
    let mut system: Option<Vec<u8>> = None;
    let mut last_failure = String::from("none");
    // Bounded: the script is cut after MAX_STEPS commands, each download by its timeout.
    let images = loop {
        match script.step() {
            Op::Fetch { name, url, .. } => {
                let stage = stage_of(&name);
                let began = *first_try.entry(name.clone()).or_insert_with(Instant::now);
                if let Some(b) = base(&url).filter(|b| !heads_used.contains(b)) {
                    heads_used.push(b);
                }
                let req = Get {
                    url: &url,
                    method: Method::GET,
                    user_agent: IPXE_AGENT,
                    if_none_match: None,
                    keep_body: matches!(stage, Some("system" | "runtime")).then_some(MAX_OVERLAY),
                    timeout: env.opts.http_timeout,
                };
                match http::get(&req, from, &mut ports, env.deadline).await {
                    Ok(f) if f.status == 200 => {
                        if env.opts.verify {
                            let what = format!("{name} ({url})");
                            let checked = match stage {
                                Some("system" | "runtime") => env.verify.overlay(&what, &f),
                                _ => Verifier::blob(&what, &f),
                            };
                            if let Err(m) = checked {
                                rec.digest_mismatches.push(m);
                            }
                        }
                        if let Some(st) = stage {
                            rec.stages.insert(
                                st,
                                StageRecord {
                                    ms: ms(began.elapsed()),
                                    head: f.authority.clone(),
                                    bytes: f.bytes,
                                },
                            );
                        }
                        if stage == Some("system") {
                            system = f.body;
                        }
                        script.complete(true);
                    }
                    Ok(f) if f.status == 403 => {
                        rec.refused += 1;
                        script.complete(false);
                    }
                    Ok(f) => {
                        rec.retries.http += 1;
                        last_failure = format!("{url}: {} {}", f.status, f.message);
                        script.complete(false);
                    }
                    Err(e) => {
                        rec.retries.http += 1;
                        last_failure = e.to_string();
                        script.complete(false);
                    }
                }
            }
            Op::Boot { images, .. } => break images,
            Op::Stop(s) => {
                return Err(format!(
                    "the iPXE script ended without booting ({s:?}); last failed download: {last_failure}"
                ))
            }
        }
    };
    rec.images = images;
    let (agent, agent_from) = match system.as_deref().and_then(wwclient_conf) {
        Some(c) => (c, "wwclient.conf"),
        None => (
            AgentConfig {
                heads: heads_used.iter().filter_map(|h| Head::parse(h).ok()).collect(),
                secure: true,
                ..AgentConfig::default()
            },
            "script heads",
        ),
    };
    Ok(Booted {
        addr: ipxe.addr,
        agent,
        agent_from,
    })
}

/// `etc/warewulf/wwclient.conf` in a system overlay archive, parsed.
pub fn wwclient_conf(system: &[u8]) -> Option<AgentConfig> {
    let entries = archive::read(system, &Limits::default()).ok()?;
    match &entries.get("etc/warewulf/wwclient.conf")?.kind {
        crate::overlay::tree::EntryKind::File(b) => AgentConfig::parse(&String::from_utf8_lossy(b)).ok(),
        _ => None,
    }
}

/// Boot (with reboots after failures) holding `permit` (the run's limit on nodes
/// booting at once), then run the agent's refreshes without it.
pub async fn run_node(env: Arc<Env>, mut n: SimNode, rec: &mut NodeRecord, permit: tokio::sync::OwnedSemaphorePermit) {
    rec.mac = n.mac_text();
    let power_on = Instant::now();
    let mut booted = None;
    let mut last_err = String::new();
    for attempt in 0..=env.opts.reboots {
        if Instant::now() >= env.deadline {
            break;
        }
        if attempt > 0 {
            rec.retries.reboots += 1;
        }
        rec.attempts += 1;
        match boot_once(&env, &mut n, rec).await {
            Ok(b) => {
                booted = Some(b);
                break;
            }
            Err(e) => {
                rec.boot_failures.push(e.clone());
                last_err = e;
            }
        }
    }
    drop(permit);
    let Some(b) = booted else {
        rec.error = Some(if Instant::now() >= env.deadline && !last_err.contains("deadline") {
            format!("deadline passed; last failure: {last_err}")
        } else {
            last_err
        });
        env.progress.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    };
    rec.booted = true;
    // From the first power-on: a reboot's lost time counts.
    rec.stages.insert(
        "boot",
        StageRecord {
            ms: ms(power_on.elapsed()),
            head: String::new(),
            bytes: 0,
        },
    );
    rec.agent_config = Some(b.agent_from.to_owned());
    env.progress.booted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    refresh(&env, &mut n, &b, rec).await;
    let all_refreshed = if env.opts.until_served {
        rec.refreshes.last().is_some_and(|r| r.status != 0)
    } else {
        rec.refreshes.len() == env.opts.refreshes as usize && rec.refreshes.iter().all(|r| r.status != 0)
    };
    rec.ok = all_refreshed && rec.digest_mismatches.is_empty();
    if !rec.digest_mismatches.is_empty() {
        rec.error = Some(format!("digest mismatch: {}", rec.digest_mismatches.join("; ")));
    } else if !all_refreshed {
        let why = rec
            .refreshes
            .iter()
            .find_map(|r| r.error.clone())
            .unwrap_or_else(|| "deadline passed before every refresh".into());
        rec.error = Some(format!(
            "runtime overlay refresh failed ({} agent config): {why}",
            b.agent_from
        ));
    }
    if rec.ok {
        env.progress.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else {
        env.progress.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `wwclient`'s cycles: the runtime overlay from the configured heads in order.
async fn refresh(env: &Env, n: &mut SimNode, b: &Booted, rec: &mut NodeRecord) {
    let wwid = n.mac_text();
    let path = crate::agent::request_path(&wwid, &b.agent, Some(&n.uuid_text()));
    let interval = env.opts.interval.unwrap_or(b.agent.interval);
    let from = From {
        addr: b.addr,
        privileged: b.agent.secure,
    };
    let mut ports = PortCursor::new(n.rng.next_u32() as u16);
    let mut etag: Option<String> = None;
    let agent = format!("wwclient/{} (wwsim)", env!("CARGO_PKG_VERSION"));
    for i in 0..env.opts.refreshes {
        if i > 0 {
            let at = (Instant::now() + interval).min(env.deadline);
            tokio::time::sleep_until(at.into()).await;
            if Instant::now() >= env.deadline {
                return;
            }
        }
        let t = Instant::now();
        let mut r = RefreshRecord::default();
        let mut last = String::from("no head configured");
        for head in &b.agent.heads {
            if head.tls {
                // Simulated nodes speak plain HTTP only: a head listed as https://
                // (`https_listen`) is a failed head here, named as such.
                r.failed_heads += 1;
                last = format!("{}: wwsim does not speak HTTPS (https_listen); not simulated", head.url);
                continue;
            }
            let url = format!("http://{}{}{}", head.authority, head.prefix, path);
            let req = Get {
                url: &url,
                method: Method::GET,
                user_agent: &agent,
                if_none_match: etag.as_deref(),
                keep_body: Some(MAX_OVERLAY),
                timeout: b.agent.timeout,
            };
            match http::get(&req, from, &mut ports, env.deadline).await {
                Ok(f) if f.status == 304 => {
                    r.status = 304;
                    r.head = Some(f.authority);
                    break;
                }
                Ok(f) if f.status == 200 => {
                    let checked = if env.opts.verify {
                        env.verify.overlay(&format!("runtime overlay ({url})"), &f)
                    } else {
                        Ok(())
                    };
                    match checked {
                        Ok(()) => {
                            etag = f.etag.clone();
                            r.status = 200;
                            r.head = Some(f.authority);
                            break;
                        }
                        Err(m) => {
                            // wwclient skips a head whose archive does not read.
                            rec.digest_mismatches.push(m.clone());
                            r.failed_heads += 1;
                            last = m;
                        }
                    }
                }
                Ok(f) => {
                    r.failed_heads += 1;
                    last = format!("{url}: {} {}", f.status, f.message);
                }
                Err(e) => {
                    r.failed_heads += 1;
                    last = e.to_string();
                }
            }
        }
        r.ms = ms(t.elapsed());
        // The run started `deadline` before its end (see `run_on`).
        r.at = ms((env.deadline - env.opts.deadline).elapsed()) / 1000.0;
        if r.status == 0 {
            r.error = Some(last);
        }
        let served = r.status != 0;
        rec.refreshes.push(r);
        env.progress
            .refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if served && env.opts.until_served {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_forms() {
        let n = SimNode {
            index: 0,
            id: Identity {
                mac: [0x02, 0, 0, 0, 0x01, 0xff],
                uuid: [0xab; 16],
            },
            rng: Rng::new(1),
        };
        assert_eq!(n.mac_text(), "02:00:00:00:01:ff");
        assert_eq!(n.uuid_text(), "abababab-abab-abab-abab-abababababab");
        assert_eq!(http_port("http://10.0.0.1:9873/ipxe/x"), 9873);
        assert_eq!(
            base("http://10.0.0.1:9873/kernel/x?y").as_deref(),
            Some("http://10.0.0.1:9873")
        );
    }

    #[test]
    fn wwclient_conf_is_read_from_a_system_overlay() {
        use crate::overlay::tree::{Entry, EntryKind};
        let mut e = BTreeMap::new();
        e.insert("etc".to_owned(), Entry::dir(0o755));
        e.insert("etc/warewulf".to_owned(), Entry::dir(0o755));
        e.insert(
            "etc/warewulf/wwclient.conf".to_owned(),
            Entry {
                kind: EntryKind::File(
                    b"head = http://10.10.0.2:9873\nhead = http://10.10.0.1:9873\ninterval = 7s\nsecure = true\n"
                        .to_vec(),
                ),
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        );
        let bytes = archive::pack(&e, &Default::default()).unwrap();
        let c = wwclient_conf(&bytes).unwrap();
        let heads: Vec<&str> = c.heads.iter().map(|h| h.authority.as_str()).collect();
        assert_eq!(heads, ["10.10.0.2:9873", "10.10.0.1:9873"]);
        assert_eq!((c.interval, c.secure), (Duration::from_secs(7), true));
        assert!(wwclient_conf(b"not an archive").is_none());
    }

    #[test]
    fn the_verifier_catches_a_wrong_blob_and_an_etag_with_two_bodies() {
        let ok = Fetched {
            status: 200,
            authority: "10.0.0.1:9873".into(),
            etag: Some(format!("\"{}\"", Digest::of(b"k"))),
            bytes: 1,
            digest: Digest::of(b"k"),
            body: None,
            message: String::new(),
            elapsed: Duration::ZERO,
        };
        assert!(Verifier::blob("kernel", &ok).is_ok());
        let bad = Fetched {
            digest: Digest::of(b"x"),
            ..ok.clone()
        };
        let e = Verifier::blob("kernel", &bad).unwrap_err();
        assert!(e.contains("but the ETag says"), "{e}");
        // Overlays: a valid archive, and the same ETag must always carry the same bytes.
        let mut entries = BTreeMap::new();
        entries.insert("etc".to_owned(), crate::overlay::tree::Entry::dir(0o755));
        let a = archive::pack(&entries, &Default::default()).unwrap();
        let v = Verifier::default();
        let ov = |body: Vec<u8>| Fetched {
            etag: Some("\"abc\"".into()),
            digest: Digest::of(&body),
            body: Some(body),
            ..ok.clone()
        };
        assert!(v.overlay("system", &ov(a.clone())).is_ok());
        assert!(v.overlay("system", &ov(a.clone())).is_ok());
        let mut corrupt = a.clone();
        let i = corrupt.len() - 6;
        corrupt[i] ^= 0xff; // inside the gzip trailer's CRC
        let e = v.overlay("system", &ov(corrupt)).unwrap_err();
        assert!(e.contains("not a valid archive"), "{e}");
        entries.insert("tmp".to_owned(), crate::overlay::tree::Entry::dir(0o1777));
        let other = archive::pack(&entries, &Default::default()).unwrap();
        let e = v.overlay("system", &ov(other)).unwrap_err();
        assert!(e.contains("came with"), "{e}");
    }
}
