//! Fuzzing the HTTP boot routes (issue 12, parts 6 and 7): raw request lines — route
//! prefixes, MACs well and badly written, path pieces that try to climb out (`..`,
//! encoded dots and slashes, NULs, the symlink out of the iPXE directory), query strings
//! (`wwid=`, `assetkey=`, `stage=`, junk) and Range / If-None-Match headers — sent over
//! a plain TCP socket, so no client library normalizes them first. Every answer is a
//! well-formed HTTP response that is not a server error, and none carries the bytes of
//! the file outside the served directories. Bounded: a fixed number of cases per run.

use std::io::{Read, Write};
use std::time::Duration;

use proptest::prelude::*;

use crate::boot_http::start;

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("%2E%2e%2f".to_owned()),
        Just("%2f".to_owned()),
        Just("%00".to_owned()),
        Just("escape".to_owned()),
        Just("secret".to_owned()),
        Just("snponly.efi".to_owned()),
        Just("aa:bb:cc:dd:ee:01".to_owned()),
        Just("AA-BB-CC-DD-EE-01".to_owned()),
        Just("aa:bb:cc:dd:ee:02".to_owned()),
        Just("52:54:00:12:34:56".to_owned()),
        Just("sha256:".to_owned()),
        Just("".to_owned()),
        "[a-zA-Z0-9:._~-]{1,12}",
        "[0-9a-f]{64}",
    ]
}

fn prefix() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("/ipxe/"),
        Just("/kernel/"),
        Just("/image/"),
        Just("/system/"),
        Just("/runtime/"),
        Just("/provision/"),
        Just("/efiboot/"),
        Just("/blob/"),
        Just("/status"),
        Just("/overlay-system/"),
        Just("/overlay-runtime/"),
        Just("/health"),
        Just("/"),
        Just("//"),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("?wwid=aa:bb:cc:dd:ee:01".to_owned()),
        Just("?assetkey=s3cret".to_owned()),
        Just("?stage=kernel&wwid=aa:bb:cc:dd:ee:02".to_owned()),
        Just("?wwid=%2e%2e%2fsecret".to_owned()),
        "\\?[a-z]{1,8}=[a-zA-Z0-9%:._-]{0,20}(&[a-z]{1,8}=[a-zA-Z0-9%]{0,10}){0,3}",
    ]
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "Range: bytes=[0-9]{0,8}-[0-9]{0,8}\r\n",
        "Range: bytes=-[0-9]{1,8}\r\n",
        "Range: bytes=[0-9]{1,4}-[0-9]{1,4},[0-9]{1,4}-\r\n",
        "Range: [a-z=,0-9-]{0,20}\r\n",
        "If-None-Match: \"[0-9a-f]{0,64}\"\r\n",
        "If-None-Match: [ -~]{0,20}\r\n",
    ]
}

/// Send one raw request, return the status code and the whole response.
fn raw_get(addr: std::net::SocketAddr, target: &str, extra: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let head = String::from_utf8_lossy(&out[..out.len().min(64)]).into_owned();
    let code = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response to {target:?}: {head:?}"));
    (code, out)
}

#[test]
fn raw_requests_never_fail_the_server_or_leak_files() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(start());
    let addr = b.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prefix(),
        proptest::collection::vec(piece(), 0..4),
        prop_oneof![Just("/"), Just("%2f"), Just("\\")],
        query(),
        header(),
    );
    let result = runner.run(&strategy, |(prefix, parts, sep, query, header)| {
        let target = format!("{prefix}{}{query}", parts.join(sep));
        let (code, body) = raw_get(addr, &target, &header);
        prop_assert!(
            (200..500).contains(&code),
            "{target:?} ({header:?}) → {code}: {}",
            String::from_utf8_lossy(&body)
        );
        prop_assert!(
            !body.windows(14).any(|w| w == b"SECRET-CONTENT"),
            "{target:?} served the file outside the iPXE directory"
        );
        Ok(())
    });
    drop(b);
    if let Err(e) = result {
        panic!("{e}");
    }
}
