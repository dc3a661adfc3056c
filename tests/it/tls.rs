//! Mutual TLS, credentials and join tokens (issue 12) with real `wulfd` processes set up
//! as docs/OPERATIONS.md "Certificates and credentials" says: `wwctl cluster pki init`,
//! `head-<id>/` in each head's `tls.dir`, the first credential made on a head with
//! `credentials add --local`, the others through the API.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use wulfpack::client::Client;
use wulfpack::pki::tls::{client_config, Dialer};
use wulfpack::pki::CredFiles;
use wulfpack::state::{Query, Selector};

use crate::proc_cluster::{wait_until, ProcCluster};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

fn wwctl(heads: &str, cert: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(WWCTL);
    if !args.contains(&"--timeout") {
        c.args(["--timeout", "10"]);
    }
    c.args(["--heads", heads]);
    if let Some(cert) = cert {
        c.arg("--cert").arg(cert);
    }
    c.args(args).stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dialer(dir: &Path, name: &str) -> Dialer {
    let (ca, cert, key) = CredFiles::operator(dir, name).read().unwrap();
    Dialer::tls(client_config(&ca, Some((&cert, &key))).unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn credentials_roles_revocation_and_join_tokens() {
    let mut c = ProcCluster::start_tls(Path::new(WULFD), 3, "");
    let heads = c.all_heads();
    // The first operator: made as root on head 1 from its CA key, recorded in the cluster.
    let (ops, out) = first_operator(&c);
    assert!(out.contains("recorded in the cluster"), "{out}\n{}", c.log(0));
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(ops.join("root.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600, "a credential's key is private");
    let root: PathBuf = ops.join("root.crt");
    let ok = |cert: &Path, args: &[&str]| {
        let o = wwctl(&heads, Some(cert), args);
        assert!(o.status.success(), "wwctl {args:?}: {}", text(&o));
        text(&o)
    };
    ok(&root, &["node", "add", "n1"]);
    // `configure tls` reports the answering head's certificates.
    let conf = ok(&root, &["--heads", &c.addrs[0], "configure", "tls"]);
    for want in [
        "mutual TLS 1.3",
        "head-1 (head)",
        "valid",
        "SHA-256",
        "ca.key",
        "present",
    ] {
        assert!(conf.contains(want), "{want:?} in {conf}");
    }

    // Without a credential: plaintext gets nowhere, TLS without a client certificate is
    // refused on the admin API and on Raft.
    let o = wwctl(&heads, None, &["node", "list"]);
    assert!(!o.status.success(), "plaintext must not work: {}", text(&o));
    let ca = std::fs::read_to_string(ops.join("ca.crt")).unwrap();
    let anonymous = Dialer::tls(client_config(&ca, None).unwrap());
    let e = rt()
        .block_on(async {
            // Channels belong to the runtime they are made in.
            let client = Client::with_dialer(vec![c.addrs[0].clone()], &anonymous);
            client.read(&Query::nodes(Selector::All), false).await
        })
        .unwrap_err();
    assert!(e.to_string().contains("no client certificate"), "{e}");
    let raft_call = |d: &Dialer| {
        rt().block_on(async {
            let ch = d.lazy(wulfpack::raft::endpoint(&c.addrs[1]).unwrap());
            let mut r = wulfpack::pb::raft::raft_client::RaftClient::new(ch);
            r.vote(wulfpack::pb::raft::RaftPayload { json: vec![] })
                .await
                .unwrap_err()
        })
    };
    let s = raft_call(&anonymous);
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    let s = raft_call(&dialer(&ops, "root"));
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "an admin is not a head: {s:?}");

    // A read credential reads and cannot write.
    ok(
        &root,
        &[
            "cluster",
            "credentials",
            "add",
            "reader",
            "--role",
            "read",
            "--out",
            ops.to_str().unwrap(),
        ],
    );
    let reader = ops.join("reader.crt");
    assert!(ok(&reader, &["node", "list"]).contains("n1"));
    // BMC passwords (part 5): shown only to an admin, and only when asked; a read
    // credential sees that one is set even when it asks.
    ok(&root, &["node", "set", "n1", "--ipmipass", "s3cret-bmc", "-y"]);
    let masked = ok(&root, &["node", "export", "n1"]);
    assert!(
        !masked.contains("s3cret-bmc") && masked.contains("********"),
        "{masked}"
    );
    assert!(ok(&root, &["--show-secrets", "node", "export", "n1"]).contains("s3cret-bmc"));
    for args in [
        &["node", "export", "n1"][..],
        &["--show-secrets", "node", "export", "n1"],
    ] {
        let shown = ok(&reader, args);
        assert!(!shown.contains("s3cret-bmc") && shown.contains("********"), "{shown}");
    }
    // The masked export imported back keeps the password.
    let exported = c.dir.path().join("n1.yaml");
    std::fs::write(&exported, &masked).unwrap();
    ok(&root, &["node", "import", exported.to_str().unwrap(), "-y"]);
    assert!(ok(&root, &["--show-secrets", "node", "export", "n1"]).contains("s3cret-bmc"));
    let o = wwctl(&heads, Some(&reader), &["node", "add", "n2"]);
    assert!(
        !o.status.success() && text(&o).contains("needs the admin role"),
        "{}",
        text(&o)
    );
    // Issuing credentials and join tokens is an admin's, like every write.
    for args in [
        &[
            "cluster",
            "credentials",
            "add",
            "mallory",
            "--out",
            ops.to_str().unwrap(),
        ][..],
        &["cluster", "token", "create"],
        &["cluster", "credentials", "revoke", "root"],
    ] {
        let o = wwctl(&heads, Some(&reader), args);
        assert!(
            !o.status.success() && text(&o).contains("needs the admin role"),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert!(!ops.join("mallory.crt").exists());

    let list = ok(&root, &["cluster", "credentials", "list"]);
    assert!(
        list.contains("root") && list.contains("admin") && list.contains("reader") && list.contains("read"),
        "{list}"
    );
    // The audit log names the certificate, not what the client claims.
    let audit = ok(&root, &["audit"]);
    assert!(audit.contains("root (admin"), "{audit}");

    // Revoked: every head refuses it within a second of the revocation's acknowledgement.
    let reader_dialer = dialer(&ops, "reader");
    let o = ok(&root, &["cluster", "credentials", "revoke", "reader"]);
    let revoked_at = Instant::now();
    assert!(o.contains("revoked reader"), "{o}");
    for addr in &c.addrs {
        let refused = rt().block_on(async {
            let client = Client::with_dialer(vec![addr.clone()], &reader_dialer).with_deadline(Duration::from_secs(1));
            loop {
                match client.read(&Query::nodes(Selector::All), false).await {
                    Err(e) if e.to_string().contains("revoked") => return true,
                    _ if revoked_at.elapsed() > Duration::from_secs(1) => return false,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        assert!(
            refused,
            "head {addr} still accepts the revoked credential 1 s after the revocation"
        );
    }

    // Join tokens: a wrong secret and an expired token cannot join; a good one once.
    let token = ok(&root, &["cluster", "token", "create", "--ttl", "10m"])
        .trim()
        .to_string();
    assert!(token.starts_with("wpj1."), "{token}");
    let via = c.addrs[0].clone();
    let join_yaml = |t: &str| format!("tls: {{join_token: \"{t}\", join_via: [\"{via}\"]}}\n");
    let mut parts: Vec<&str> = token.split('.').collect();
    let wrong_secret = "0".repeat(32);
    parts[2] = &wrong_secret;
    let bad = c.start_empty(&join_yaml(&parts.join(".")));
    assert!(
        c.wait_exit(bad, 30).is_some_and(|s| !s.success()),
        "a wrong token must stop the head"
    );
    assert!(c.log(bad).contains("wrong secret"), "{}", c.log(bad));

    // A token that names another cluster's CA: the head it dials is not of that CA,
    // which no retry mends, so the joining head stops at once (not after its 120 s).
    let mut parts: Vec<&str> = token.split('.').collect();
    let other_ca = "ab".repeat(32);
    parts[3] = &other_ca;
    let started = Instant::now();
    let foreign = c.start_empty(&join_yaml(&parts.join(".")));
    assert!(
        c.wait_exit(foreign, 30).is_some_and(|s| !s.success()),
        "a token of another CA must stop the head"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(
        c.log(foreign).contains("not the one the join token names"),
        "{}",
        c.log(foreign)
    );

    let short = ok(&root, &["cluster", "token", "create", "--ttl", "1s"])
        .trim()
        .to_string();
    // Let it expire (the behaviour under test is what happens after its time).
    std::thread::sleep(Duration::from_secs(2));
    let late = c.start_empty(&join_yaml(&short));
    assert!(
        c.wait_exit(late, 30).is_some_and(|s| !s.success()),
        "an expired token must stop the head"
    );
    assert!(c.log(late).contains("expired"), "{}", c.log(late));

    let good = c.start_empty(&join_yaml(&token));
    let id = (good + 1).to_string();
    let addr = c.addrs[good].clone();
    wait_until(30, "the new head enrolled", || c.log(good).contains("enrolled"));
    let o = ok(&root, &["--timeout", "60", "cluster", "join", &id, &addr]);
    assert!(o.contains("voter"), "{o}");
    let verify = ok(&root, &["--timeout", "30", "cluster", "verify"]);
    assert!(verify.contains(&addr), "{verify}");
    let again = c.start_empty(&join_yaml(&token));
    assert!(
        c.wait_exit(again, 30).is_some_and(|s| !s.success()),
        "a used token must not work twice"
    );
    assert!(c.log(again).contains("already used"), "{}", c.log(again));
    let tokens = ok(&root, &["cluster", "token", "list"]);
    assert!(
        tokens.contains(&format!("used by head {id}")) && tokens.contains("expired"),
        "{tokens}"
    );
}

#[test]
fn a_head_refuses_to_start_without_certificates_or_with_another_heads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("wulfd.yaml");
    let run = |yaml: &str| {
        std::fs::write(&cfg, yaml).unwrap();
        let o = Command::new(WULFD)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!o.status.success());
        text(&o)
    };
    let data = dir.path().join("data");
    let base = format!(
        "id: 1\ndata_dir: {}\nlisten: 127.0.0.1:1\nhttp_listen: 127.0.0.1:2\nbootstrap: [{{id: 1, addr: \"127.0.0.1:1\"}}]\n",
        data.display()
    );
    let e = run(&base);
    assert!(
        e.contains("holds no certificates") && e.contains("pki init") && e.contains("insecure: true"),
        "{e}"
    );
    // head-2's directory copied to head 1.
    let pki = dir.path().join("pki");
    let o = Command::new(WWCTL)
        .args(["cluster", "pki", "init", "--ids", "1,2", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(o.status.success());
    let e = run(&format!("{base}tls: {{dir: {}}}\n", pki.join("head-2").display()));
    assert!(e.contains("head-2") && e.contains("this is head-1"), "{e}");
    let e = run(&format!("{base}insecure: true\ntls: {{dir: /x}}\n"));
    assert!(e.contains("both set"), "{e}");
    // A second `pki init` into the same directory would make a second CA.
    let o = Command::new(WWCTL)
        .args(["cluster", "pki", "init", "--ids", "1", "--out"])
        .arg(&pki)
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("already holds a CA"),
        "{}",
        text(&o)
    );
}

/// Once a leader is there (waited for with head 1's own certificate): the first
/// operator credential, `root`, made on head 1 as OPERATIONS.md says; returns the
/// directory holding it (and `ca.crt`) and the command's output.
fn first_operator(c: &ProcCluster) -> (PathBuf, String) {
    let pki0 = c.dir.path().join("data0/pki");
    let head_cert = pki0.join("head.crt");
    wait_until(30, "a leader", || {
        text(&wwctl(&c.all_heads(), Some(&head_cert), &["cluster", "status"])).contains("Leader")
    });
    let ops = c.dir.path().join("ops");
    let o = wwctl(
        &c.all_heads(),
        None,
        &[
            "cluster",
            "credentials",
            "add",
            "root",
            "--local",
            "--pki-dir",
            pki0.to_str().unwrap(),
            "--out",
            ops.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    (ops, text(&o))
}

/// The serial of the certificate `addr` shows in a new TLS handshake.
fn served_serial(ops: &Path, addr: &str) -> String {
    let (ca, cert, key) = CredFiles::operator(ops, "root").read().unwrap();
    let config = client_config(&ca, Some((&cert, &key))).unwrap();
    let mut conn = rustls::ClientConnection::new(config, "head".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    wulfpack::pki::identity_of(&leaf).unwrap().serial
}

#[test]
fn cluster_rotate_gives_every_head_a_new_certificate_without_a_restart() {
    let mut c = ProcCluster::start_tls(Path::new(WULFD), 3, "");
    let heads = c.all_heads();
    let (ops, _) = first_operator(&c);
    let root = ops.join("root.crt");
    let ok = |args: &[&str]| {
        let o = wwctl(&heads, Some(&root), args);
        assert!(o.status.success(), "wwctl {args:?}: {}", text(&o));
        text(&o)
    };
    ok(&["node", "add", "n1"]);
    let before: Vec<String> = c.addrs.iter().map(|a| served_serial(&ops, a)).collect();

    let out = ok(&["cluster", "rotate"]);
    let mut after = Vec::new();
    for (i, addr) in c.addrs.iter().enumerate() {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("head-{}", i + 1)))
            .unwrap_or_else(|| panic!("no row for head {} in\n{out}", i + 1));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((cols[1], cols[2]), (addr.as_str(), before[i].as_str()), "{out}");
        assert_ne!(cols[3], cols[2], "a new serial: {out}");
        // Served from the next handshake on, reported by `configure tls`, and on disk.
        assert_eq!(
            served_serial(&ops, addr),
            cols[3],
            "head {} serves the new certificate",
            i + 1
        );
        let conf = text(&wwctl(addr, Some(&root), &["configure", "tls"]));
        assert!(conf.contains(&format!("serial {}", cols[3])), "{out}\n{conf}");
        let on_disk = std::fs::read_to_string(c.dir.path().join(format!("data{i}/pki/head.crt"))).unwrap();
        let der = wulfpack::pki::first_cert_der(&on_disk).unwrap();
        assert_eq!(wulfpack::pki::identity_of(&der).unwrap().serial, cols[3]);
        after.push(cols[3].to_string());
    }

    // The cluster goes on: writes commit (Raft between heads on the channels they had),
    // and every head holds the same state.
    ok(&["node", "add", "n2"]);
    assert!(ok(&["--timeout", "30", "cluster", "verify"]).contains(&c.addrs[2]));

    // A head restarted after the rotation loads the new pair and rejoins with it.
    c.kill(1);
    c.spawn(1);
    wait_until(30, "head 2 back", || {
        wwctl(&c.addrs[1], Some(&root), &["node", "list"]).status.success()
    });
    assert_eq!(served_serial(&ops, &c.addrs[1]), after[1]);
    ok(&["node", "add", "n3"]);
    let verify = ok(&["--timeout", "30", "cluster", "verify"]);
    assert!(verify.contains(&c.addrs[1]), "{verify}");

    // One head only, by id; an unknown id is refused before anything changes.
    let o = wwctl(&heads, Some(&root), &["cluster", "rotate", "9"]);
    assert!(
        !o.status.success() && text(&o).contains("head 9 is not a member"),
        "{}",
        text(&o)
    );
    let one = ok(&["cluster", "rotate", "3"]);
    assert_eq!(one.lines().filter(|l| l.starts_with("head-")).count(), 1, "{one}");
    assert_ne!(served_serial(&ops, &c.addrs[2]), after[2]);
    assert_eq!(served_serial(&ops, &c.addrs[0]), after[0], "head 1 untouched");

    // Rotating is an admin's: a read credential is refused.
    ok(&[
        "cluster",
        "credentials",
        "add",
        "reader",
        "--role",
        "read",
        "--out",
        ops.to_str().unwrap(),
    ]);
    let o = wwctl(&heads, Some(&ops.join("reader.crt")), &["cluster", "rotate"]);
    assert!(
        !o.status.success() && text(&o).contains("needs the admin role"),
        "{}",
        text(&o)
    );
}

/// Blob transfers and liveness probes between heads go over the gRPC port under mutual
/// TLS (issue 12 part 1): an overlay imported through head 1 alone reaches heads 2 and
/// 3 (the boot port no longer serves blobs, so TLS is the only way it can travel), and
/// only a head's certificate may fetch a blob or a probe.
#[test]
fn blobs_and_probes_between_heads_need_a_head_certificate() {
    let c = ProcCluster::start_tls(Path::new(WULFD), 3, "");
    let pki0 = c.dir.path().join("data0/pki");
    let (ops, _) = first_operator(&c);
    let root = ops.join("root.crt");
    let on_head1 = |args: &[&str]| {
        let o = wwctl(&c.addrs[0], Some(&root), args);
        assert!(o.status.success(), "wwctl {args:?}: {}", text(&o));
        text(&o)
    };
    let motd = c.dir.path().join("motd");
    std::fs::write(&motd, "only head 1 had this at first\n").unwrap();
    on_head1(&["overlay", "create", "site1"]);
    on_head1(&["overlay", "import", "-p", "site1", motd.to_str().unwrap(), "/etc/motd"]);
    let list: serde_json::Value = serde_json::from_str(&on_head1(&["-o", "json", "overlay", "list"])).unwrap();
    let digest = list
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "site1")
        .and_then(|o| o["digest"].as_str())
        .unwrap()
        .to_string();

    let ca = std::fs::read_to_string(ops.join("ca.crt")).unwrap();
    let head1 = {
        let read = |f: &str| std::fs::read_to_string(pki0.join(f)).unwrap();
        Dialer::tls(client_config(&ca, Some((&read("head.crt"), &read("head.key")))).unwrap())
    };
    let get = |d: &Dialer, addr: &str, path: &str| -> Result<(u16, Vec<u8>), String> {
        rt().block_on(async {
            let http = d.http(Duration::from_secs(2)).unwrap();
            let r = http
                .get(format!("{}{path}", d.base_url(addr)))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let st = r.status().as_u16();
            Ok((st, r.bytes().await.map_err(|e| e.to_string())?.to_vec()))
        })
    };
    let blob = format!("/blob/{digest}");
    for (i, addr) in c.addrs.iter().enumerate() {
        wait_until(30, &format!("head {} holds the overlay's tree", i + 1), || {
            matches!(get(&head1, addr, &blob), Ok((200, _)))
        });
        let (_, body) = get(&head1, addr, &blob).unwrap();
        let got = format!("sha256:{}", wulfpack::pki::sha256_hex(&body));
        assert_eq!(got, digest, "head {} serves the blob's bytes", i + 1);
    }

    // Only heads: no certificate → 401, an admin → 403, plaintext → no answer at all,
    // and the HTTP boot port has no blob route.
    let anonymous = Dialer::tls(client_config(&ca, None).unwrap());
    assert_eq!(get(&anonymous, &c.addrs[1], &blob).map(|r| r.0), Ok(401));
    assert_eq!(get(&dialer(&ops, "root"), &c.addrs[1], &blob).map(|r| r.0), Ok(403));
    assert!(get(&Dialer::plain(), &c.addrs[1], &blob).is_err());
    let boot_port = rt().block_on(async {
        reqwest::get(format!("http://{}{blob}", c.http[1]))
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(boot_port, 404, "blobs are not on the boot port");
    assert_eq!(get(&anonymous, &c.addrs[1], "/health").map(|r| r.0), Ok(401));
    let (st, body) = get(&head1, &c.addrs[1], "/health").unwrap();
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, report["id"].as_u64()), (200, Some(2)), "{report}");
}

/// `https_listen` (issue 12 part 4): a node's `wwclient` fetches its runtime overlay over
/// HTTPS, checking the head against the cluster CA that the `wwclient` overlay wrote;
/// a CA of another cluster and plain HTTP to the HTTPS port get nothing.
#[test]
fn wwclient_fetches_its_runtime_overlay_over_https_with_the_cluster_ca() {
    const MAC: &str = "52:54:00:aa:0c:01";
    let https_port = crate::proc_cluster::free_ports(1).pop().unwrap();
    let https = https_port.clone();
    let c = ProcCluster::start_tls(
        Path::new(WULFD),
        1,
        // Secure mode needs a privileged source port (root); the HTTPS path is the same.
        &format!("https_listen: \"{https}\"\nboot: {{http: {{secure: false}}}}\n"),
    );
    let heads = c.all_heads();
    let (ops, _) = first_operator(&c);
    let root = ops.join("root.crt");
    let ok = |args: &[&str]| {
        let o = wwctl(&heads, Some(&root), args);
        assert!(o.status.success(), "wwctl {args:?}: {}", text(&o));
        text(&o)
    };
    let motd = c.dir.path().join("motd");
    std::fs::write(&motd, "over https\n").unwrap();
    ok(&["overlay", "create", "site1"]);
    ok(&["overlay", "import", "-p", "site1", motd.to_str().unwrap(), "/etc/motd"]);
    ok(&[
        "node",
        "add",
        "n1",
        "--hwaddr",
        MAC,
        "--ipaddr",
        "127.0.0.1",
        "--system-overlays",
        "wwclient",
        "--runtime-overlays",
        "site1",
    ]);

    // The system overlay (plain HTTP, as iPXE fetches it) carries wwclient's config,
    // naming this head at its HTTPS address, and the cluster CA.
    let mut files = Default::default();
    wait_until(30, "wwclient.conf names the head over https", || {
        let (st, body) = crate::overlay_boot::get_from(&c.http[0], &format!("/system/{MAC}"), 0);
        if st != 200 {
            return false;
        }
        files = crate::overlay_boot::unpack(&body);
        files
            .get("etc/warewulf/wwclient.conf")
            .is_some_and(|e| crate::overlay_boot::text(e).contains(&format!("head = https://{https}")))
    });
    let conf = crate::overlay_boot::text(&files["etc/warewulf/wwclient.conf"]);
    assert!(conf.contains("ca = /etc/warewulf/ca.crt"), "{conf}");
    let ca = crate::overlay_boot::text(&files["etc/warewulf/ca.crt"]);
    assert_eq!(ca, std::fs::read_to_string(ops.join("ca.crt")).unwrap());

    // The node: its config with the CA at the path where the overlay put it on the node.
    let node = tempfile::tempdir().unwrap();
    let (etc, noderoot) = (node.path().join("etc"), node.path().join("root"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&noderoot).unwrap();
    std::fs::write(etc.join("ca.crt"), &ca).unwrap();
    let conf_on_node = conf.replace("/etc/warewulf/ca.crt", etc.join("ca.crt").to_str().unwrap());
    let wwclient = |conf: &str| {
        std::fs::write(etc.join("wwclient.conf"), conf).unwrap();
        Command::new(env!("CARGO_BIN_EXE_wwclient"))
            .arg("--config")
            .arg(etc.join("wwclient.conf"))
            .args(["--wwid", MAC, "--once", "--root"])
            .arg(&noderoot)
            .output()
            .unwrap()
    };
    let o = wwclient(&conf_on_node);
    assert!(o.status.success(), "{}\n{conf_on_node}", text(&o));
    assert_eq!(
        std::fs::read_to_string(noderoot.join("etc/motd")).unwrap(),
        "over https\n"
    );

    // A hung head listed first (TCP accepted, the TLS handshake never answered) costs
    // wwclient its per-head deadline, then the next head serves.
    std::fs::remove_file(noderoot.join("etc/motd")).unwrap();
    let hung = crate::wwclient::Hung::start();
    let t = Instant::now();
    let o = wwclient(&format!(
        "head = https://127.0.0.1:{}\ntimeout = 1s\n{conf_on_node}",
        hung.port
    ));
    let took = t.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "head https://127.0.0.1:{} failed: no answer within",
            hung.port
        )),
        "{}",
        text(&o)
    );
    assert!(took < Duration::from_secs(3), "a hung HTTPS head took {took:?}");
    assert_eq!(
        std::fs::read_to_string(noderoot.join("etc/motd")).unwrap(),
        "over https\n"
    );
    drop(hung);

    // A CA of another cluster: the head is not trusted, nothing is applied.
    std::fs::remove_file(noderoot.join("etc/motd")).unwrap();
    let other = c.dir.path().join("other-pki");
    let o = Command::new(WWCTL)
        .args(["cluster", "pki", "init", "--ids", "1", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::copy(other.join("head-1/ca.crt"), etc.join("ca.crt")).unwrap();
    let o = wwclient(&conf_on_node);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("certificate"), "{}", text(&o));
    assert!(!noderoot.join("etc/motd").exists());
    // Plain HTTP to the HTTPS port is not served.
    std::fs::write(etc.join("ca.crt"), &ca).unwrap();
    let o = wwclient(&conf_on_node.replace("https://", "http://"));
    assert!(!o.status.success(), "{}", text(&o));

    // After `cluster rotate` the HTTPS port shows the new certificate and wwclient,
    // which pins the CA and not the certificate, goes on.
    let rotated = ok(&["cluster", "rotate"]);
    let new_serial = rotated
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let (ca_pem, _, _) = CredFiles::operator(&ops, "root").read().unwrap();
    let config = wulfpack::pki::tls::node_client_config(&ca_pem).unwrap();
    let mut conn = rustls::ClientConnection::new(config, "head".try_into().unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(&https).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(wulfpack::pki::identity_of(&leaf).unwrap().serial, new_serial);
    let o = wwclient(&conf_on_node);
    assert!(o.status.success(), "{}", text(&o));
    assert!(noderoot.join("etc/motd").exists());
}
