//! Overlays on the boot routes of an in-process 3-head cluster: a site overlay made
//! with `wwctl overlay`, nodes listing it, `/system/{wwid}` rendered per node on any
//! head (a head without the tree fetches it from a peer), rebuilt after an overlay
//! change, and `/runtime/{wwid}` served only to the node's own address and, in secure
//! mode, only from a privileged port — each refusal a 403 the status history shows.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use wulfpack::overlay::archive;
use wulfpack::overlay::tree::{Entry, EntryKind};

use crate::harness::{eventually, ok, settings, Cluster};
use crate::registry::is_root;

const MAC1: &str = "52:54:00:aa:00:01";
const MAC2: &str = "52:54:00:aa:00:02";

pub(crate) fn unpack(body: &[u8]) -> BTreeMap<String, Entry> {
    archive::read(body, &archive::Limits::default()).expect("one valid gzip'd newc archive")
}

pub(crate) fn text(e: &Entry) -> String {
    match &e.kind {
        EntryKind::File(b) => String::from_utf8_lossy(b).into_owned(),
        k => panic!("not a file: {k:?}"),
    }
}

/// A plain HTTP/1.1 GET from a chosen local port (0: any): status and body.
pub(crate) fn get_from(addr: &str, path: &str, local_port: u16) -> (u16, Vec<u8>) {
    let target: SocketAddr = addr.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], local_port)).into())
        .unwrap();
    sock.connect_timeout(&target.into(), Duration::from_secs(5)).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head.to_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_get_their_rendered_overlays_and_runtime_overlays_only_reach_their_node() {
    let c = Cluster::start(3, settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    };
    ok(&c, &["overlay", "create", "site1"]).await;
    let hostname = file("hostname.ww", "{{ Id }}\n");
    ok(&c, &["overlay", "import", "-p", "site1", &hostname, "/etc/hostname.ww"]).await;
    let key = file("key.ww", "secret of {{ Id }}\n");
    ok(&c, &["overlay", "import", "-m", "0600", "site1", &key, "/etc/key.ww"]).await;
    let motd = file("motd", "plain file\n");
    ok(&c, &["overlay", "import", "site1", &motd, "/etc/motd"]).await;
    for (n, mac, ip) in [("n1", MAC1, "127.0.0.1"), ("n2", MAC2, "10.9.9.9")] {
        ok(
            &c,
            &[
                "node",
                "add",
                n,
                "--hwaddr",
                mac,
                "--ipaddr",
                ip,
                "--system-overlays",
                "site1,wwclient",
                "--runtime-overlays",
                "site1",
            ],
        )
        .await;
    }

    // Every head serves n1's system overlay, rendered for n1 (a head that does not
    // have the overlay's tree yet answers 404 and fetches it from a peer).
    for i in 0..3 {
        let http = c.cfgs[i].http_listen.clone();
        let last = std::sync::Arc::new(std::sync::Mutex::new((0u16, Vec::new())));
        eventually(10, &format!("head {} serves n1's system overlay", i + 1), || {
            let (http, got) = (http.clone(), last.clone());
            async move {
                let r = tokio::task::spawn_blocking(move || get_from(&http, &format!("/system/{MAC1}?compress=gz"), 0))
                    .await
                    .unwrap();
                let ok = r.0 == 200;
                *got.lock().unwrap() = r;
                ok
            }
        })
        .await;
        let last = last.lock().unwrap().clone();
        let files = unpack(&last.1);
        assert_eq!(text(&files["etc/hostname"]), "n1\n");
        assert_eq!(text(&files["etc/key"]), "secret of n1\n");
        assert_eq!(files["etc/key"].mode, 0o600, "a secret keeps its template's mode");
        assert_eq!(text(&files["etc/motd"]), "plain file\n");
        // The shipped wwclient overlay: its config lists every head, the serving one
        // first, and is what the agent parses.
        let conf = &files["etc/warewulf/wwclient.conf"];
        assert_eq!(conf.mode, 0o600);
        let parsed = wulfpack::agent::config::Config::parse(&text(conf)).expect("wwclient accepts its config");
        assert_eq!(parsed.heads.len(), 3, "{}", text(conf));
        assert!(parsed.secure, "secure mode is the default");
    }
    // n2 was added after n1: head 1 serving n1 does not mean it has applied n2 yet.
    let last = std::sync::Arc::new(std::sync::Mutex::new((0u16, Vec::new())));
    eventually(10, "head 1 serves n2's system overlay", || {
        let (http, got) = (c.cfgs[0].http_listen.clone(), last.clone());
        async move {
            let r = tokio::task::spawn_blocking(move || get_from(&http, &format!("/system/{MAC2}"), 0))
                .await
                .unwrap();
            let ok = r.0 == 200;
            *got.lock().unwrap() = r;
            ok
        }
    })
    .await;
    let body = last.lock().unwrap().1.clone();
    assert_eq!(text(&unpack(&body)["etc/hostname"]), "n2\n");

    // An overlay change reaches the next build.
    let hostname = file("hostname.ww", "host {{ Id }}\n");
    ok(
        &c,
        &[
            "overlay",
            "import",
            "--overwrite",
            "site1",
            &hostname,
            "/etc/hostname.ww",
        ],
    )
    .await;
    let http0 = c.cfgs[0].http_listen.clone();
    eventually(10, "the changed template is rendered", || {
        let http = http0.clone();
        async move {
            let (st, body) = tokio::task::spawn_blocking(move || get_from(&http, &format!("/system/{MAC1}"), 0))
                .await
                .unwrap();
            st == 200 && text(&unpack(&body)["etc/hostname"]) == "host n1\n"
        }
    })
    .await;

    // `overlay show --render` renders one template for a node on the head asked, in
    // Warewulf's format; `overlay build` fills the head's cache for every node.
    let shown = ok(&c, &["overlay", "show", "--render", "n1", "site1", "/etc/hostname.ww"]).await;
    assert_eq!(
        shown,
        "backupFile: true\nwriteFile: true\nFilename: etc/hostname\nhost n1\n"
    );
    let quiet = ok(&c, &["overlay", "show", "-r", "n2", "-q", "site1", "etc/hostname.ww"]).await;
    assert_eq!(quiet, "host n2\n");
    let e = crate::harness::ww(&c, &["overlay", "show", "-r", "n1", "site1", "/etc/nothing.ww"])
        .await
        .unwrap_err();
    assert!(e.contains("nothing"), "{e}");
    let built = ok(&c, &["overlay", "build"]).await;
    assert!(built.starts_with("Built overlays of 2 node(s)"), "{built}");

    // `configure hostfile|nfs`: the host overlay rendered by the head, written here.
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let said = ok(&c, &["configure", "hostfile", "--root", r]).await;
    assert!(said.contains("etc/hosts"), "{said}");
    let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
    assert!(hosts.contains("# Do not edit after this line"), "{hosts}");
    assert!(
        hosts.contains("127.0.0.1 n1 n1-default") && hosts.contains("10.9.9.9 n2 n2-default"),
        "{hosts}"
    );
    // A hand edit is kept as a backup when the file is written again.
    std::fs::write(root.path().join("etc/hosts"), "edited by hand\n").unwrap();
    ok(&c, &["configure", "hostfile", "--root", r]).await;
    assert_eq!(std::fs::read_to_string(root.path().join("etc/hosts")).unwrap(), hosts);
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/hosts.wwbackup")).unwrap(),
        "edited by hand\n"
    );
    let said = ok(&c, &["configure", "nfs", "--root", r]).await;
    assert!(said.contains("Not reloading NFS"), "{said}");
    let exports = std::fs::read_to_string(root.path().join("etc/exports")).unwrap();
    assert!(
        exports.starts_with("# This file is autogenerated by warewulf"),
        "{exports}"
    );

    // Runtime: from an unprivileged port, secure mode (the default) refuses n1 ...
    let (st, body) = tokio::task::spawn_blocking({
        let http = http0.clone();
        move || get_from(&http, &format!("/runtime/{MAC1}"), 0)
    })
    .await
    .unwrap();
    assert_eq!(st, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("privileged port"));
    let status = ok(&c, &["node", "status", "n1"]).await;
    assert!(
        status.contains("RUNTIME_OVERLAY") && status.contains("FORBIDDEN"),
        "{status}"
    );

    // ... and n2's runtime overlay never goes to 127.0.0.1, which is not n2's address;
    // the refusal is in n2's history, marked, and does not become its row.
    let (st, body) = tokio::task::spawn_blocking({
        let http = http0.clone();
        move || get_from(&http, &format!("/runtime/{MAC2}"), 0)
    })
    .await
    .unwrap();
    assert_eq!(st, 403);
    assert!(String::from_utf8_lossy(&body).contains("not an address of n2"));
    let hist = ok(&c, &["node", "status", "n2", "--history"]).await;
    assert!(
        hist.contains("FORBIDDEN") && hist.contains("not from the node's address"),
        "{hist}"
    );

    // From a privileged port (root only), n1 gets its runtime overlay.
    if is_root() {
        let (st, body) = tokio::task::spawn_blocking({
            let http = http0.clone();
            move || get_from(&http, &format!("/runtime/{MAC1}?compress=gz"), 1011)
        })
        .await
        .unwrap();
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(text(&unpack(&body)["etc/key"]), "secret of n1\n");
        let status = ok(&c, &["node", "status", "n1"]).await;
        assert!(
            status.contains("RUNTIME_OVERLAY") && !status.contains("FORBIDDEN"),
            "{status}"
        );
    } else {
        eprintln!("SKIP (part): a runtime overlay from a privileged port needs root");
    }
    c.shutdown().await;
}
