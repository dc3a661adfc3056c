//! Least exposure on the boot side (issue 12, part 4): a real `wulfd` in a namespace the
//! test makes, a client namespace with two addresses on the link, one allowed
//! (`boot.allow`, as docs/OPERATIONS.md shows it) and one not; then a rack whose network
//! covers both (`wwctl rack add`), which allows the other at once.

use std::time::{Duration, Instant};

use crate::netns::NetNs;

#[test]
fn clients_outside_the_racks_get_nothing_from_http_boot_or_tftp() {
    if let Some(why) = crate::netns::skip_reason(&[("ip", "iproute2"), ("curl", "curl")]) {
        eprintln!("SKIP clients_outside_the_racks_get_nothing_from_http_boot_or_tftp: {why}");
        return;
    }
    let head = NetNs::new("alh");
    let client = NetNs::new("alc");
    head.veth("h0", Some("10.96.0.1/24"), &client, "c0", Some("10.96.0.2/24"));
    client.ok("ip addr add 10.96.0.3/24 dev c0");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("tftp");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("undionly.kpxe"), b"not really ipxe").unwrap();
    let cfg = work.path().join("wulfd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:9701\nhttp_listen: 10.96.0.1:9873\ninsecure: true\n\
             bootstrap:\n  - {{id: 1, addr: 127.0.0.1:9701}}\n\
             boot:\n  allow: [10.96.0.2/32]\n  tftp: {{enabled: true, listen: \"10.96.0.1:69\", root: {}}}\n",
            work.path().join("data").display(),
            root.display()
        ),
    )
    .unwrap();
    let log = work.path().join("wulfd.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let wulfd = head.spawn(
        &[env!("CARGO_BIN_EXE_wulfd"), "--config", cfg.to_str().unwrap()],
        Some(&log),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !crate::pxe::wwctl(&head, &["profile", "list"]).1.contains("default") {
        assert!(Instant::now() < deadline, "wulfd did not come up: {}", read_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let http = |from: &str| {
        client
            .sh(&format!(
                "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --interface {from} http://10.96.0.1:9873/ipxe/52:54:00:aa:bb:cc"
            ))
            .stdout
    };
    let tftp = |from: &str| {
        client
            .sh(&format!(
                "curl -sS --max-time 3 --interface {from} tftp://10.96.0.1/undionly.kpxe"
            ))
            .stdout
    };
    // The allowed client gets the unconfigured script and the file; the other nothing.
    assert!(
        client.wait_for(
            "curl -s --max-time 3 --interface 10.96.0.2 tftp://10.96.0.1/undionly.kpxe | grep -q ipxe",
            Duration::from_secs(20)
        ),
        "TFTP to the allowed client: {}",
        read_log()
    );
    assert_eq!(String::from_utf8_lossy(&http("10.96.0.2")), "200");
    assert_eq!(String::from_utf8_lossy(&http("10.96.0.3")), "403", "{}", read_log());
    assert!(tftp("10.96.0.3").is_empty(), "TFTP answered a client outside");
    assert!(
        read_log().contains("refused a client outside every rack network"),
        "refusals leave a trace: {}",
        read_log()
    );

    // A rack whose network covers 10.96.0.3: allowed from the next request on.
    let (ok, out) = crate::pxe::wwctl(
        &head,
        &[
            "rack",
            "add",
            "r9",
            "--network",
            "10.96.0.0/24",
            "--head",
            "1=10.96.0.1",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        client.wait_for(
            "curl -s --max-time 3 --interface 10.96.0.3 tftp://10.96.0.1/undionly.kpxe | grep -q ipxe",
            Duration::from_secs(10)
        ),
        "TFTP to a client of a rack: {}",
        read_log()
    );
    assert_eq!(String::from_utf8_lossy(&http("10.96.0.3")), "200");
    head.kill(wulfd);
}
