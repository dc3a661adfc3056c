//! ISC `dhclient` as a test client: one run in a namespace, with our own
//! `dhclient-script` that records what the server handed out and sets only the address
//! (Debian's script would rewrite the host's `/etc/resolv.conf`).

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use crate::netns::NetNs;

/// What one `dhclient` run got.
pub struct Lease {
    /// Whether the interface got an address matching `want_cidr` within the timeout.
    pub bound: bool,
    /// `new_*` variables of the BOUND event (`key=value` lines), empty if none.
    pub env: String,
    /// dhclient's own log.
    pub log: String,
}

impl Lease {
    /// Panics with the log unless `key=value` was handed out.
    pub fn expect(&self, kv: &str) {
        assert!(
            self.env.contains(kv),
            "missing {kv} in:\n{}\ndhclient log:\n{}",
            self.env,
            self.log
        );
    }
}

/// Runs `dhclient -4 -1` on `iface` in `ns` until `ip addr` shows an address starting
/// with `want_cidr` (`10.77.0.50/24`, or a prefix such as `10.79.0.10` for any of
/// .100–.109) or `timeout` passes; the client is killed either way.
pub fn run(ns: &NetNs, iface: &str, want_cidr: &str, timeout: Duration) -> Lease {
    run_with(ns, iface, want_cidr, timeout, "")
}

/// [`run`] with extra `dhclient.conf` statements (e.g. `initial-interval 1;` to
/// retransmit like a PXE ROM instead of after 10 s).
pub fn run_with(ns: &NetNs, iface: &str, want_cidr: &str, timeout: Duration, extra_conf: &str) -> Lease {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    let d = dir.path().display();
    std::fs::write(
        p("script"),
        format!(
            "#!/bin/sh\nenv | grep -E '^(reason|new_|interface)' | sort > {d}/env.$reason\n\
             case \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;; esac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(p("script"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        p("dhclient.conf"),
        format!("timeout 30;\nrequest subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name;\n{extra_conf}\n"),
    )
    .unwrap();
    let s = |n: &str| p(n).to_string_lossy().into_owned();
    let (script, conf, leases, pidf) = (s("script"), s("dhclient.conf"), s("leases"), s("pid"));
    let limit = (timeout.as_secs() + 20).to_string();
    let pid = ns.spawn(
        &[
            "timeout", &limit, "dhclient", "-4", "-d", "-1", "-v", "-cf", &conf, "-sf", &script, "-lf", &leases, "-pf",
            &pidf, iface,
        ],
        Some(&p("dhclient.log")),
    );
    let bound = ns.wait_for(
        &format!("ip -4 addr show dev {iface} | grep -q 'inet {want_cidr}'"),
        timeout,
    );
    ns.kill(pid);
    Lease {
        bound,
        env: std::fs::read_to_string(p("env.BOUND")).unwrap_or_default(),
        log: std::fs::read_to_string(p("dhclient.log")).unwrap_or_default(),
    }
}
