//! Test fixture: two network namespaces joined by a veth pair.
//!
//! LAB.md's rule: DHCP and TFTP servers under test run only inside namespaces the
//! test creates, on links it creates. [`NsPair::create`] makes `<name>-s` (the
//! server side, `10.99.<n>.1/24`) and `<name>-c` (the client side, `.2`), each
//! with loopback up; [`NsPair::cmd`] runs a program inside one of them; dropping
//! the pair deletes both namespaces, which removes the veth with them. Processes a
//! test starts are the test's to kill (by PID) before the pair is dropped.
//!
//! Self-contained (only `ip` from iproute2) so the TFTP tests and the boot
//! benchmark can share it; the DHCP side may have its own.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct NsPair {
    pub server: String,
    pub client: String,
    pub server_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NsPair {
    /// Create the pair, or say why not (not root, no `ip`, no netns support).
    pub fn create(tag: &str) -> Result<NsPair, String> {
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("wp{tag}{}-{seq}", std::process::id());
        let n = ((std::process::id() + seq) % 200 + 20) as u8;
        let pair = NsPair {
            server: format!("{name}-s"),
            client: format!("{name}-c"),
            server_ip: Ipv4Addr::new(10, 99, n, 1),
            client_ip: Ipv4Addr::new(10, 99, n, 2),
        };
        ip(&["netns", "add", &pair.server])?;
        // From here on Drop cleans up whatever was made.
        if let Err(e) = ip(&["netns", "add", &pair.client]) {
            drop(pair);
            return Err(e);
        }
        let (s, c) = (pair.server.as_str(), pair.client.as_str());
        let sip = format!("{}/24", pair.server_ip);
        let cip = format!("{}/24", pair.client_ip);
        let steps: [&[&str]; 7] = [
            &[
                "-n", s, "link", "add", "veth-s", "type", "veth", "peer", "name", "veth-c", "netns", c,
            ],
            &["-n", s, "addr", "add", &sip, "dev", "veth-s"],
            &["-n", c, "addr", "add", &cip, "dev", "veth-c"],
            &["-n", s, "link", "set", "veth-s", "up"],
            &["-n", c, "link", "set", "veth-c", "up"],
            &["-n", s, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(pair)
    }

    /// `program` run inside namespace `ns` (one of `server`/`client`).
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
