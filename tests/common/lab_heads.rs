//! What the namespace labs (`rack_lab.rs`, `rack_qemu_lab.rs`) share about heads: their
//! `/health` on the management bridge, a bounded wait that prints the heads' logs when it
//! times out, and a `wwctl` run that must succeed.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::netns::NetNs;

/// Head `id`'s `/health` answer, asked from `sw` (the management bridge), or "".
pub fn health(sw: &NetNs, id: u64) -> String {
    let o = sw.sh(&format!("curl -s -m 1 http://10.0.0.{id}:9873/health"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Poll `f` every 200 ms until it holds; after `secs`, panic with `logs()`.
pub fn wait(what: &str, secs: u64, logs: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stdout of a `wwctl` run that must have succeeded (else panic with `logs()`).
pub fn ok_output(args: &str, o: std::process::Output, logs: impl Fn() -> String) -> String {
    assert!(
        o.status.success(),
        "wwctl {args}: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        logs()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
