//! # `wwclient`, the node agent
//!
//! Keeps a booted node's runtime overlay fresh: every update interval it fetches
//! `GET /runtime/{wwid}?assetkey=…&uuid=…&compress=gz` from the heads that serve its
//! rack and lays the archive over `/`.
//!
//! | part | job |
//! |---|---|
//! | [`config`] | `/etc/warewulf/wwclient.conf` (written by the `wwclient` overlay): heads in order, interval, per-head deadline, secure mode, asset key |
//! | [`ident`] | the node's `wwid` (kernel command line, else the boot interface's MAC) and SMBIOS UUID |
//! | [`fetch`] | one blocking HTTP/1.1 GET with a deadline over everything, from a port < 1024 in secure mode |
//! | [`apply`] | the archive laid over the root atomically per path, never through a symlink, stale paths removed by manifest |
//!
//! Failover: each cycle asks the heads in the configured order, each with its own
//! short deadline (connect + whole response), and stops at the first that serves a
//! valid archive. A head that is down, hung, answers an error or sends a bad archive is
//! skipped for the next one; the next cycle starts from the first head again, so a
//! recovered preferred head is used again. Failures are logged on stderr, at most one
//! line per head per [`LOG_EVERY`] unless the reason changes.
//!
//! The agent is plain threads and blocking sockets: no async runtime to start on a
//! node, every wait bounded by a deadline. The one exception is SIGHUP ("fetch now"),
//! which a tokio signal listener on a side thread turns into a channel message (safe
//! signal handling without hand-written FFI); the loop waits on that channel with the
//! interval as its timeout.

pub mod apply;
pub mod config;
pub mod fetch;
pub mod ident;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::overlay::archive::{self, Limits};

pub use self::config::{Config, Head};

/// At most one log line per head and reason in this long.
pub const LOG_EVERY: Duration = Duration::from_secs(600);

/// Why the agent cannot run or a fetch failed everywhere.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config {path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error("cannot tell which node this is: {0}; pass --wwid MAC or boot with wwid= on the kernel command line")]
    NoWwid(String),
    #[error("no head served the runtime overlay: {}", .0.join("; "))]
    NoHead(Vec<String>),
    #[error("runtime overlay from {head} applied with errors: {}", .errors.join("; "))]
    Apply { head: String, errors: Vec<String> },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
}

/// How to run (the command line, resolved).
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    /// File holding the kernel command line.
    pub cmdline: PathBuf,
    /// Overrides the wwid from the command line.
    pub wwid: Option<String>,
    /// Directory the overlay is applied into.
    pub root: PathBuf,
    /// One fetch, then exit.
    pub once: bool,
}

/// The node's `wwid`: `--wwid`, else `wwid=`/`BOOTIF=` in the command line, else the MAC
/// of the boot interface.
pub fn resolve_wwid(o: &Options) -> Result<String, AgentError> {
    if let Some(w) = &o.wwid {
        return Ok(ident::normalize(w));
    }
    let cmdline = std::fs::read_to_string(&o.cmdline);
    if let Some(w) = cmdline.as_deref().ok().and_then(ident::wwid_from_cmdline) {
        return Ok(w);
    }
    ident::mac_of_boot_interface("/proc/net/route".as_ref(), "/sys/class/net".as_ref()).ok_or_else(|| {
        AgentError::NoWwid(match cmdline {
            Ok(_) => format!(
                "{} has no wwid= and no network interface has a MAC",
                o.cmdline.display()
            ),
            Err(e) => format!("cannot read {}: {e}", o.cmdline.display()),
        })
    })
}

/// The request path for a node.
pub fn request_path(wwid: &str, cfg: &Config, uuid: Option<&str>) -> String {
    let mut p = format!("/runtime/{}?compress=gz", fetch::encode(wwid));
    if let Some(k) = &cfg.assetkey {
        p.push_str(&format!("&assetkey={}", fetch::encode(k)));
    }
    if let Some(u) = uuid {
        p.push_str(&format!("&uuid={}", fetch::encode(u)));
    }
    p
}

/// Rate-limits failure lines: per head, a line when the reason changes or every
/// [`LOG_EVERY`], with the count of the lines held back.
#[derive(Debug, Default)]
struct LogLimiter {
    last: HashMap<String, (String, Instant, u32)>,
}

impl LogLimiter {
    fn failed(&mut self, head: &str, why: &str) {
        if let Some(l) = self.line(head, &format!("head {head} failed: {why}")) {
            eprintln!("wwclient: {l}");
        }
    }

    /// The line to print for `key` now: `line` unless the same line for `key` was
    /// printed less than [`LOG_EVERY`] ago (then None, and it is counted).
    fn line(&mut self, key: &str, line: &str) -> Option<String> {
        let now = Instant::now();
        match self.last.get_mut(key) {
            Some((last, at, held)) if last == line && now.duration_since(*at) < LOG_EVERY => {
                *held += 1;
                None
            }
            slot => {
                let held = slot.map(|s| s.2).unwrap_or(0);
                self.last.insert(key.to_owned(), (line.to_owned(), now, 0));
                Some(if held > 0 {
                    format!("{line} ({held} more like it since the last line)")
                } else {
                    line.to_owned()
                })
            }
        }
    }

    fn served(&mut self, head: &str) {
        if self.last.remove(head).is_some() {
            eprintln!("wwclient: head {head} serves again");
        }
    }
}

/// One cycle: ask the heads in order; apply the first valid archive.
fn cycle(
    cfg: &Config,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
    applier: &apply::Applier,
    log: &mut LogLimiter,
    verbose: bool,
) -> Result<(), AgentError> {
    let limits = Limits::default();
    let mut failures = Vec::new();
    for head in &cfg.heads {
        let got = fetch::get(head, path, cfg.secure, cfg.timeout, limits.max_total_bytes, tls)
            .map_err(|e| e.to_string())
            .and_then(|r| archive::read(&r.body, &limits).map_err(|e| e.to_string()));
        match got {
            Ok(entries) => {
                log.served(&head.url);
                let report = applier.apply(&entries).map_err(|e| AgentError::Apply {
                    head: head.url.clone(),
                    errors: vec![e],
                })?;
                for k in &report.kept {
                    eprintln!("wwclient: kept {k}");
                }
                if verbose || report.written + report.removed > 0 {
                    eprintln!(
                        "wwclient: runtime overlay from {}: {} written, {} unchanged, {} removed",
                        head.url, report.written, report.unchanged, report.removed
                    );
                }
                if !report.errors.is_empty() {
                    return Err(AgentError::Apply {
                        head: head.url.clone(),
                        errors: report.errors,
                    });
                }
                return Ok(());
            }
            Err(why) => {
                log.failed(&head.url, &why);
                failures.push(format!("{}: {why}", head.url));
            }
        }
    }
    Err(AgentError::NoHead(failures))
}

/// How `https://` heads are checked: against the cluster CA in `ca`.
fn tls_config(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let bad = |why: String| AgentError::Config {
        path: ca.to_owned(),
        why,
    };
    let pem = std::fs::read_to_string(ca).map_err(|e| bad(format!("cannot read the cluster CA: {e}")))?;
    crate::pki::tls::node_client_config(&pem).map_err(|e| bad(format!("not a CA certificate: {e}")))
}

/// Runs the agent: one cycle with `--once`, else forever (SIGHUP = a cycle now).
pub fn run(o: &Options) -> Result<(), AgentError> {
    let cfg = Config::load(&o.config)?;
    let tls = cfg.ca.as_deref().map(tls_config).transpose()?;
    let wwid = resolve_wwid(o)?;
    let uuid = ident::smbios_uuid();
    let path = request_path(&wwid, &cfg, uuid.as_deref());
    let applier = apply::Applier::new(&o.root);
    let mut log = LogLimiter::default();
    if o.once {
        return cycle(&cfg, tls.as_ref(), &path, &applier, &mut log, true);
    }
    let wake = hangups()?;
    eprintln!(
        "wwclient: node {wwid}, {} head(s), every {:?} (SIGHUP: now), applying into {}",
        cfg.heads.len(),
        cfg.interval,
        o.root.display()
    );
    loop {
        if let Err(e) = cycle(&cfg, tls.as_ref(), &path, &applier, &mut log, false) {
            // Per-head reasons are already logged; apply errors (a path that cannot be
            // written stays so every cycle) once per reason and LOG_EVERY too.
            if let AgentError::Apply { .. } = e {
                if let Some(l) = log.line("(apply)", &e.to_string()) {
                    eprintln!("wwclient: {l}");
                }
            }
        }
        match wake.recv_timeout(cfg.interval) {
            Ok(()) => {
                // Several SIGHUPs while busy are one "fetch now".
                while wake.try_recv().is_ok() {}
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The signal thread is gone: keep the interval.
                std::thread::sleep(cfg.interval);
            }
        }
    }
}

/// A channel that receives one message per SIGHUP. The handler is installed before
/// this returns, so a SIGHUP sent after start-up never takes the default action (exit).
fn hangups() -> Result<mpsc::Receiver<()>, AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(AgentError::Signal)?;
    let mut hup = {
        let _g = rt.enter();
        signal(SignalKind::hangup()).map_err(AgentError::Signal)?
    };
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            rt.block_on(async move {
                while hup.recv().await.is_some() {
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            })
        })
        .map_err(AgentError::Signal)?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_lines_are_rate_limited_per_key_and_reason() {
        let mut l = LogLimiter::default();
        assert_eq!(l.line("h1", "down").as_deref(), Some("down"));
        assert_eq!(l.line("h1", "down"), None);
        assert_eq!(l.line("h1", "down"), None);
        assert_eq!(l.line("h2", "down").as_deref(), Some("down"), "another head");
        assert_eq!(
            l.line("h1", "hung").as_deref(),
            Some("hung (2 more like it since the last line)"),
            "a new reason is printed at once"
        );
        // Once LOG_EVERY has passed, the same reason is printed again.
        l.last.get_mut("h1").unwrap().1 = Instant::now() - LOG_EVERY;
        assert_eq!(l.line("h1", "hung").as_deref(), Some("hung"));
    }

    #[test]
    fn the_request_names_the_node_and_carries_the_asset_key() {
        let cfg = Config {
            assetkey: Some("a&b c".into()),
            ..Config::default()
        };
        assert_eq!(
            request_path("aa:bb:cc:dd:ee:ff", &cfg, Some("u-1")),
            "/runtime/aa:bb:cc:dd:ee:ff?compress=gz&assetkey=a%26b%20c&uuid=u-1"
        );
        assert_eq!(request_path("x", &Config::default(), None), "/runtime/x?compress=gz");
    }
}
