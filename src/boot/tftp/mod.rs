//! # TFTP: the iPXE binaries for PXE firmware
//!
//! Legacy PXE ROMs and UEFI firmware can only fetch their first program over TFTP;
//! everything after iPXE starts goes over HTTP. So this server is deliberately
//! small: read-only, one root directory (Debian's `/usr/lib/ipxe` by default),
//! nothing outside it (see [`root`] for how paths are contained), options
//! `blksize`, `tsize`, `timeout` and `windowsize` (RFC 2347/2348/2349/7440; limits
//! configurable). The protocol is [`server`].
//!
//! Why threads and not tokio tasks: TFTP is lock-step, its speed the round trip of
//! one block. A request thread receives the requests and each transfer has a thread
//! of its own blocking on its own socket, so an ACK wakes the transfer directly (no
//! reactor, executor or thread hop between it and the next block) and TFTP load never
//! competes with the HTTP and Raft tasks on tokio's workers. [`server`] says why this
//! replaced async-tftp (issue 11: 0.8× tftpd-hpa before, see docs/PERFORMANCE.md).
//! `run` itself is an ordinary async function (bind a socket, pass a shutdown future)
//! like the head's other servers.

pub mod root;
pub mod server;

#[cfg(test)]
mod fuzz;

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use root::{Refusal, Root, Source};

/// Default TFTP root: Debian's `ipxe` package.
pub const DEFAULT_ROOT: &str = "/usr/lib/ipxe";

/// `boot: tftp:` in `wulfd.yaml` (wire form; see [`TftpConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TftpConfig {
    /// Serve TFTP at all (off unless asked, like DHCP: a head never answers boot
    /// protocols on networks it was not told to serve).
    pub enabled: bool,
    /// `host:port` to bind (normally the rack interface's address, port 69), or a list
    /// of them: a head serving several racks listens on its address on each.
    pub listen: Listen,
    /// Directory served (read-only).
    pub root: PathBuf,
    /// Retransmit timeout when the client does not ask for one.
    pub timeout_ms: u64,
    /// Largest `blksize` granted (clients may ask for less). 1468 fits a 1500-byte
    /// MTU without IP fragmentation; U-Boot and some firmware cannot reassemble.
    pub max_block_size: u16,
    /// Largest `windowsize` granted (RFC 7440); 1 disables windowing.
    pub max_window_size: u16,
    /// Files up to this size are served from memory.
    pub memory_file_limit: u64,
    /// Memory for such files in all.
    pub memory_budget: u64,
    /// Give up a transfer after this many retransmissions of one window.
    pub max_send_retries: u32,
    /// Transfers at once (each has a thread); requests beyond are dropped and the
    /// clients retransmit them.
    pub max_transfers: usize,
    /// Transfers at once from one client address (a PXE ROM fetches one file at a
    /// time); a request beyond gets an ERROR packet "too many transfers from this
    /// client" and a warning is logged (once per client per 10 s).
    pub max_transfers_per_client: usize,
    /// A transfer whose client acknowledges nothing for this long ends with an ERROR
    /// packet, whatever retransmit `timeout` the client asked for (RFC 2349 allows
    /// 255 s, times `max_send_retries`).
    pub idle_timeout_ms: u64,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: false,
            listen: Listen::One("0.0.0.0:69".into()),
            root: PathBuf::from(DEFAULT_ROOT),
            timeout_ms: 3000,
            max_block_size: 1468,
            max_window_size: 16,
            memory_file_limit: 16 << 20,
            memory_budget: 128 << 20,
            max_send_retries: 20,
            max_transfers: 512,
            max_transfers_per_client: 4,
            idle_timeout_ms: 60_000,
        }
    }
}

impl TftpConfig {
    /// Check values that would make a useless server.
    pub fn validate(&self) -> Result<(), TftpError> {
        let bad = |field: &'static str, why: String| Err(TftpError::Config { field, why });
        let addrs = self.listen.addrs();
        if addrs.is_empty() {
            return bad("listen", "no address; give host:port, or a list of them".into());
        }
        for a in &addrs {
            if a.parse::<SocketAddr>().is_err() {
                return bad("listen", format!("{a:?} is not an address:port"));
            }
        }
        for (i, a) in addrs.iter().enumerate() {
            if addrs[..i].contains(a) {
                return bad("listen", format!("{a} is listed twice"));
            }
        }
        if !(8..=65464).contains(&self.max_block_size) {
            return bad(
                "max_block_size",
                format!("{} is outside RFC 2348's 8..=65464", self.max_block_size),
            );
        }
        if self.max_window_size == 0 {
            return bad("max_window_size", "0; use 1 to disable windowing".into());
        }
        if self.timeout_ms == 0 {
            return bad("timeout_ms", "0 would retransmit without waiting".into());
        }
        if self.max_transfers == 0 {
            return bad("max_transfers", "0 would serve nobody".into());
        }
        if self.max_transfers_per_client == 0 {
            return bad("max_transfers_per_client", "0 would serve nobody".into());
        }
        if self.idle_timeout_ms < self.timeout_ms {
            return bad(
                "idle_timeout_ms",
                format!(
                    "{} is below timeout_ms ({}): transfers would end before their first retransmission",
                    self.idle_timeout_ms, self.timeout_ms
                ),
            );
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP config `boot.tftp.{field}`: {why}")]
    Config { field: &'static str, why: String },
    #[error("TFTP root {path}: {source}; install Debian's `ipxe` package or set `boot.tftp.root` to a directory with the iPXE binaries")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("TFTP socket: {0}; check that the address is local and the port free (port 69 needs root or CAP_NET_BIND_SERVICE)")]
    Socket(#[source] std::io::Error),
    #[error("TFTP server thread: {0}")]
    Thread(String),
}

/// `boot.tftp.listen`: one address or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    pub fn addrs(&self) -> Vec<&str> {
        match self {
            Listen::One(a) => vec![a.as_str()],
            Listen::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for Listen {
    fn from(a: &str) -> Listen {
        Listen::One(a.to_owned())
    }
}

impl From<String> for Listen {
    fn from(a: String) -> Listen {
        Listen::One(a)
    }
}

/// Bind one listen address.
pub fn bind_addr(addr: &str) -> Result<UdpSocket, TftpError> {
    UdpSocket::bind(addr).map_err(TftpError::Socket)
}

/// Serve TFTP on `socket` until `shutdown` resolves. Transfers in progress are
/// dropped at shutdown (a PXE client retries from the start anyway), within a quarter
/// of a second.
pub async fn run(
    socket: UdpSocket,
    cfg: TftpConfig,
    allow: Option<Arc<crate::boot::allow::Allow>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), TftpError> {
    cfg.validate()?;
    let root = Root::new(&cfg.root, cfg.memory_file_limit, cfg.memory_budget).map_err(|source| TftpError::Root {
        path: cfg.root.clone(),
        source,
    })?;
    let local = socket.local_addr().map_err(TftpError::Socket)?;
    let limits = server::Limits {
        max_block_size: cfg.max_block_size,
        max_window_size: cfg.max_window_size,
        timeout: Duration::from_millis(cfg.timeout_ms),
        max_send_retries: cfg.max_send_retries,
        max_transfers: cfg.max_transfers,
        max_per_client: cfg.max_transfers_per_client,
        idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
    };
    /// Stops the threads however `run` ends (shutdown, error, or its future dropped).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tracing::info!(%local, root = %cfg.root.display(), "TFTP serving");
    let flag = stop.0.clone();
    std::thread::Builder::new()
        .name("tftp".into())
        .spawn(move || {
            let _ = done_tx.send(server::serve(socket, root, limits, allow, flag));
        })
        .map_err(|e| TftpError::Thread(e.to_string()))?;
    let result = tokio::select! {
        r = done_rx => match r {
            Ok(r) => r.map_err(TftpError::Socket),
            Err(_) => Err(TftpError::Thread("the TFTP thread panicked".into())),
        },
        () = shutdown => Ok(()),
    };
    drop(stop);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c = TftpConfig::default();
        assert!(!c.enabled, "off unless configured");
        assert_eq!(c.root, PathBuf::from("/usr/lib/ipxe"));
        c.validate().unwrap();
        let c2: TftpConfig =
            serde_yaml_ng::from_str("enabled: true\nlisten: 10.0.0.1:69\nmax_block_size: 1432\n").unwrap();
        assert_eq!((c2.enabled, c2.max_block_size, c2.timeout_ms), (true, 1432, 3000));
        let c3: TftpConfig = serde_yaml_ng::from_str("listen: [10.0.0.1:69, 10.3.0.1:69]\n").unwrap();
        c3.validate().unwrap();
        assert_eq!(c3.listen.addrs(), ["10.0.0.1:69", "10.3.0.1:69"]);
        for (yaml, field) in [
            ("listen: nowhere", "listen"),
            ("listen: []", "listen"),
            ("listen: [10.0.0.1:69, 10.0.0.1:69]", "listen"),
            ("max_block_size: 4", "max_block_size"),
            ("max_window_size: 0", "max_window_size"),
            ("timeout_ms: 0", "timeout_ms"),
            ("max_transfers: 0", "max_transfers"),
            ("max_transfers_per_client: 0", "max_transfers_per_client"),
            ("idle_timeout_ms: 0", "idle_timeout_ms"),
            ("timeout_ms: 5000\nidle_timeout_ms: 4000", "idle_timeout_ms"),
        ] {
            let c: TftpConfig = serde_yaml_ng::from_str(yaml).unwrap();
            match c.validate() {
                Err(TftpError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{yaml}: {other:?}"),
            }
        }
        assert!(
            serde_yaml_ng::from_str::<TftpConfig>("blksize: 1").is_err(),
            "typos are errors"
        );
    }

    #[tokio::test]
    async fn a_missing_root_is_a_clear_error() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = TftpConfig {
            root: "/nonexistent/ipxe".into(),
            ..Default::default()
        };
        let e = run(sock, cfg, None, async {}).await.unwrap_err();
        assert!(e.to_string().contains("install Debian's `ipxe` package"), "{e}");
    }
}
