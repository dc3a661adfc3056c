//! The receiving head's own housekeeping: `Clean` (unreferenced blobs of its store) and
//! `BootServices` (a check of its DHCP, TFTP and HTTP boot, what `wwctl configure
//! dhcp|tftp|warewulfd` report instead of writing another daemon's configuration).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::Status;

use crate::boot::dhcp::config::DhcpConfig;
use crate::cas::{Cas, Digest};
use crate::pb::admin as pb;

/// What a head was started with that the boot services check reads.
#[derive(Debug, Clone)]
pub struct BootFacts {
    /// `boot.dhcp` (None: DHCP off).
    pub dhcp: Option<DhcpConfig>,
    /// `boot.tftp` (None: TFTP off).
    pub tftp: Option<crate::boot::tftp::TftpConfig>,
    /// The iPXE binaries' directory (TFTP root, `/efiboot/`).
    pub ipxe_dir: PathBuf,
    pub http_listen: String,
    pub http_advertise: String,
    /// `boot.http.secure`.
    pub secure: bool,
    /// Overlays are built and served here.
    pub overlays: bool,
    /// This head's gRPC TLS (None: `insecure: true`).
    pub tls: Option<TlsFacts>,
}

/// What `configure tls` reports about a head's certificates.
#[derive(Debug, Clone)]
pub struct TlsFacts {
    pub dir: PathBuf,
    /// The head's certificate as served now (rotatable: `wwctl cluster rotate`).
    pub cert: Arc<crate::pki::HeadCert>,
    /// SHA-256 of the CA certificate.
    pub ca_fingerprint: String,
    /// `ca.key` is here (enrolment, credentials).
    pub ca_key: bool,
}

/// Findings of `configure tls`.
fn tls_checks(f: &BootFacts, now: i64) -> Vec<pb::ServiceCheck> {
    let Some(t) = &f.tls else {
        return vec![check(
            "tls",
            "mode",
            "warn",
            "insecure: true — gRPC is plaintext and takes no credentials; anyone who reaches this head's listen address controls the cluster (docs/OPERATIONS.md, \"Certificates and credentials\")",
        )];
    };
    let (identity, not_after) = match (t.cert.identity(), t.cert.not_after()) {
        (Ok(i), Ok(n)) => (i, n),
        (Err(e), _) | (_, Err(e)) => return vec![check("tls", "certificate", "fail", format!("unreadable: {e}"))],
    };
    let days = (not_after - now) / 86400;
    let mut c = vec![check(
        "tls",
        "mode",
        "ok",
        format!("mutual TLS 1.3, certificates in {}", t.dir.display()),
    )];
    c.push(if not_after <= now {
        check(
            "tls",
            "certificate",
            "fail",
            format!(
                "{} expired: peers and operators refuse this head; give it a new one (`wwctl cluster rotate`)",
                identity
            ),
        )
    } else if days < 30 {
        check(
            "tls",
            "certificate",
            "warn",
            format!("{identity} expires in {days} days: renew it before then (`wwctl cluster rotate`)"),
        )
    } else {
        check(
            "tls",
            "certificate",
            "ok",
            format!("{identity}, serial {}, valid {days} more days", identity.serial),
        )
    });
    c.push(check("tls", "ca", "ok", format!("SHA-256 {}", t.ca_fingerprint)));
    c.push(if t.ca_key {
        check(
            "tls",
            "ca.key",
            "ok",
            "present (0600): this head enrols joining heads and issues credentials",
        )
    } else {
        check(
            "tls",
            "ca.key",
            "warn",
            "absent: this head cannot enrol heads or issue credentials (other heads can)",
        )
    });
    c
}

/// `Clean`: the unreferenced blobs of `cas` older than `min_age`; removed unless `dry_run`.
pub(super) fn clean(
    head_id: u64,
    cas: &Cas,
    referenced: &HashSet<Digest>,
    dry_run: bool,
    min_age: Duration,
) -> Result<pb::CleanReply, Status> {
    let internal = |e: crate::cas::CasError| Status::internal(format!("blob store: {e}"));
    let now = SystemTime::now();
    let mut reply = pb::CleanReply {
        head_id,
        ..Default::default()
    };
    for b in cas.list().map_err(internal)? {
        let age = now.duration_since(b.modified).unwrap_or_default();
        if referenced.contains(&b.digest) || age < min_age {
            reply.kept += 1;
            continue;
        }
        reply.bytes += b.size;
        reply.blobs.push(pb::CleanBlob {
            digest: b.digest.to_string(),
            size: b.size,
            age_secs: age.as_secs(),
        });
    }
    if !dry_run {
        // The same rule as the periodic GC (which also removes stale temp files).
        let st = cas.gc(referenced, min_age).map_err(internal)?;
        reply.temp_removed = st.temp_removed as u64;
    }
    Ok(reply)
}

fn check(service: &str, item: impl Into<String>, state: &str, detail: impl Into<String>) -> pb::ServiceCheck {
    pb::ServiceCheck {
        service: service.into(),
        item: item.into(),
        state: state.into(),
        detail: detail.into(),
    }
}

/// The addresses of each interface of this machine.
fn local_addrs() -> Vec<(String, std::net::IpAddr)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.name.clone(), i.ip()))
        .collect()
}

/// `BootServices`: every finding about this head's boot services. `racks`: the racks
/// that list this head (served by DHCP beside `boot.dhcp`'s own subnets).
pub(super) async fn boot_services(head_id: u64, f: &BootFacts, racks: Vec<String>) -> pb::BootServicesReply {
    let mut c = Vec::new();
    let addrs = local_addrs();
    match &f.dhcp {
        None => c.push(check(
            "dhcp",
            "enabled",
            "warn",
            "off: boot.dhcp.interfaces in wulfd.yaml is empty, so this head answers no DHCP request",
        )),
        Some(d) => {
            c.push(check(
                "dhcp",
                "enabled",
                "ok",
                format!("on {} interface(s)", d.interfaces.len()),
            ));
            for i in &d.interfaces {
                let mine: Vec<String> = addrs
                    .iter()
                    .filter(|(n, _)| *n == i.name)
                    .map(|(_, a)| a.to_string())
                    .collect();
                if Path::new("/sys/class/net").join(&i.name).exists() {
                    c.push(check(
                        "dhcp",
                        format!("interface {}", i.name),
                        "ok",
                        format!(
                            "present, addresses {}",
                            if mine.is_empty() {
                                "none".into()
                            } else {
                                mine.join(", ")
                            }
                        ),
                    ));
                } else {
                    c.push(check(
                        "dhcp",
                        format!("interface {}", i.name),
                        "fail",
                        "no such interface on this head: fix boot.dhcp.interfaces in wulfd.yaml",
                    ));
                }
                for &k in &i.subnets {
                    let s = &d.subnets[k];
                    let pool = s
                        .pool
                        .as_ref()
                        .map(|p| format!("pool {}-{}", p.start, p.end))
                        .unwrap_or_else(|| "no pool (known nodes only)".into());
                    let (state, why) = if mine.contains(&s.server.to_string()) {
                        ("ok", String::new())
                    } else {
                        ("warn", format!("; server {} is not an address of {}", s.server, i.name))
                    };
                    c.push(check(
                        "dhcp",
                        format!("subnet {}", s.name),
                        state,
                        format!("{} on {}, server {}, {pool}{why}", s.network, i.name, s.server),
                    ));
                }
            }
            for s in d.subnets.iter().filter(|s| s.relayed) {
                c.push(check(
                    "dhcp",
                    format!("subnet {}", s.name),
                    "ok",
                    format!("{} relayed, server {}", s.network, s.server),
                ));
            }
        }
    }
    if !racks.is_empty() {
        let state = if f.dhcp.is_some() { "ok" } else { "warn" };
        c.push(check(
            "dhcp",
            "racks",
            state,
            format!("this head serves racks {}", racks.join(", ")),
        ));
    }

    match &f.tftp {
        None => c.push(check(
            "tftp",
            "enabled",
            "warn",
            "off: boot.tftp.enabled is false, so PXE ROMs get no iPXE binary from this head",
        )),
        Some(t) => {
            c.push(check(
                "tftp",
                "enabled",
                "ok",
                format!("listening on {}", t.listen.addrs().join(", ")),
            ));
            if t.root.is_dir() {
                c.push(check("tftp", "root", "ok", t.root.display().to_string()));
            } else {
                c.push(check(
                    "tftp",
                    "root",
                    "fail",
                    format!(
                        "{} is not a directory: install iPXE (Debian: ipxe) or fix boot.tftp.root",
                        t.root.display()
                    ),
                ));
            }
        }
    }
    // The binaries DHCP hands out, by client architecture: served by TFTP and at /efiboot/.
    let table = f
        .dhcp
        .as_ref()
        .map(|d| d.ipxe.clone())
        .unwrap_or_else(crate::boot::dhcp::config::default_ipxe_table);
    for (arch, file) in &table {
        let p = f.ipxe_dir.join(file);
        let item = format!("ipxe {arch:02x} {file}");
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => c.push(check("tftp", item, "ok", format!("{} bytes", m.len()))),
            _ => c.push(check(
                "tftp",
                item,
                "fail",
                format!("{} is missing: install iPXE or put the binary there", p.display()),
            )),
        }
    }

    // HTTP boot: iPXE scripts, kernels, images, overlays. Connect to it as a peer would.
    let target = f.http_advertise.clone();
    let reach = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(target.clone())).await;
    match reach {
        Ok(Ok(_)) => c.push(check(
            "warewulfd",
            "http",
            "ok",
            format!("listening on {} (reached at {target})", f.http_listen),
        )),
        Ok(Err(e)) => c.push(check(
            "warewulfd",
            "http",
            "fail",
            format!("{target} refused: {e} (http_listen {}, http_advertise)", f.http_listen),
        )),
        Err(_) => c.push(check(
            "warewulfd",
            "http",
            "fail",
            format!(
                "{target} did not answer within 1 s (http_listen {}, http_advertise)",
                f.http_listen
            ),
        )),
    }
    c.push(check(
        "warewulfd",
        "secure",
        "ok",
        if f.secure {
            "runtime overlays only to privileged source ports (wwclient)"
        } else {
            "off: runtime overlays to any client (boot.http.secure)"
        },
    ));
    c.push(if f.overlays {
        check(
            "warewulfd",
            "overlays",
            "ok",
            "system and runtime overlays built and served",
        )
    } else {
        check(
            "warewulfd",
            "overlays",
            "warn",
            "off (boot.overlays.enabled): nodes get no overlays from this head",
        )
    });
    c.extend(tls_checks(f, crate::state::unix_now() as i64));
    pb::BootServicesReply { head_id, checks: c }
}
