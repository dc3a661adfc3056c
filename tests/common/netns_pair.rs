//! Test fixture: two network namespaces joined by a veth pair, built on
//! [`super::netns::NetNs`] (which creates, enters and deletes namespaces).
//!
//! LAB.md's rule: DHCP and TFTP servers under test run only inside namespaces the
//! test creates, on links it creates. [`NsPair::create`] makes a server side
//! (`10.99.<n>.1/24` on `veth-s`) and a client side (`.2` on `veth-c`); [`NsPair::cmd`]
//! runs a program inside one of them by name; dropping the pair deletes both
//! namespaces, which removes the veth with them. Processes a test starts are the
//! test's to kill (by PID) before the pair is dropped.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::netns::{skip_reason, NetNs};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NsPair {
    /// Namespace names, for [`NsPair::cmd`].
    pub server: String,
    pub client: String,
    pub server_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    // Dropped last: deleting the namespaces removes the veth too.
    _server_ns: NetNs,
    _client_ns: NetNs,
}

impl NsPair {
    /// Create the pair, or say why not (not root, no `ip`).
    pub fn create(tag: &str) -> Result<NsPair, String> {
        if let Some(why) = skip_reason(&[("ip", "iproute2")]) {
            return Err(why);
        }
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let n = ((std::process::id() + seq) % 200 + 20) as u8;
        let (server_ip, client_ip) = (Ipv4Addr::new(10, 99, n, 1), Ipv4Addr::new(10, 99, n, 2));
        let s = NetNs::new(&format!("{tag}s"));
        let c = NetNs::new(&format!("{tag}c"));
        s.veth(
            "veth-s",
            Some(&format!("{server_ip}/24")),
            &c,
            "veth-c",
            Some(&format!("{client_ip}/24")),
        );
        Ok(NsPair {
            server: s.name.clone(),
            client: c.name.clone(),
            server_ip,
            client_ip,
            _server_ns: s,
            _client_ns: c,
        })
    }

    /// `program` run inside namespace `ns` (one of `server`/`client`).
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}
