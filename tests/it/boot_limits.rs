//! Limits on the boot side (issue 12 part 6): one client cannot starve a rack.
//!
//! On loopback only (LAB.md): the servers run in this process on 127.0.0.1, and two
//! clients are two source addresses, 127.0.0.1 and 127.0.0.2 (all of 127.0.0.0/8 is
//! local on Linux, and the allow-list answers loopback). Each test shows the limit
//! refusing one client while the other is served in the same moment, and the first
//! served again once its transfers end:
//!
//! - TFTP: transfers per client (`boot.tftp.max_transfers_per_client`) → ERROR code 0.
//! - HTTP boot: transfers per client (`boot.http.max_transfers_per_client`) → 503 with
//!   `Retry-After`.
//! - HTTP listener: a slowloris client is disconnected after the header read timeout
//!   while a normal client is served; an oversized request head gets 431 and the
//!   server keeps serving.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wulfpack::boot::http::{router, BootHttp, BootHttpConfig};
use wulfpack::boot::limit::PerClient;
use wulfpack::boot::status::StatusBoard;
use wulfpack::boot::tftp::{self, TftpConfig};
use wulfpack::boot::view::BootView;
use wulfpack::cas::zerocopy::ConnLimits;
use wulfpack::cas::Cas;
use wulfpack::model;
use wulfpack::state::{Artifact, Command as Cmd, ImageCommand, ImageEntry, Request, State};

const A: &str = "127.0.0.1";
const B: &str = "127.0.0.2";
const MAC: &str = "aa:bb:cc:dd:ee:01";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn data(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Poll `f` until it is true; fail after `secs`.
async fn wait_until(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// TFTP

fn rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    for s in [file, "octet"] {
        p.extend_from_slice(s.as_bytes());
        p.push(0);
    }
    p
}

fn udp_from(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip(addr), 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// One packet: opcode, block number or error code, the rest; and who sent it.
fn recv(s: &UdpSocket) -> (u16, u16, Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1024];
    let (n, from) = s.recv_from(&mut buf).expect("an answer from the TFTP server");
    (
        u16::from_be_bytes([buf[0], buf[1]]),
        u16::from_be_bytes([buf[2], buf[3]]),
        buf[4..n].to_vec(),
        from,
    )
}

fn ack(s: &UdpSocket, to: SocketAddr, n: u16) {
    s.send_to(&[0, 4, (n >> 8) as u8, n as u8], to).unwrap();
}

/// A transfer started (its first block received, not acknowledged yet).
struct Held {
    sock: UdpSocket,
    tid: SocketAddr,
    got: Vec<u8>,
}

fn start_transfer(from: &str, srv: SocketAddr) -> Held {
    let sock = udp_from(from);
    sock.send_to(&rrq("f"), srv).unwrap();
    let (op, block, rest, tid) = recv(&sock);
    assert_eq!(
        (op, block),
        (3, 1),
        "DATA 1 for {from}: {}",
        String::from_utf8_lossy(&rest)
    );
    Held { sock, tid, got: rest }
}

/// Acknowledge block by block to the end (plain RFC 1350, 512-byte blocks).
fn finish(mut h: Held) -> Vec<u8> {
    let mut block = 1u16;
    let mut last = h.got.len();
    while last == 512 {
        ack(&h.sock, h.tid, block);
        let (op, n, rest, _) = recv(&h.sock);
        assert_eq!(op, 3);
        if n == block.wrapping_add(1) {
            block = n;
            last = rest.len();
            h.got.extend_from_slice(&rest);
        }
    }
    ack(&h.sock, h.tid, block);
    h.got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_refuses_a_client_over_its_limit_while_another_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = data(20_000);
    std::fs::write(dir.path().join("f"), &file).unwrap();
    let sock = UdpSocket::bind((ip(A), 0)).unwrap();
    let srv = sock.local_addr().unwrap();
    let limit = 3;
    let cfg = TftpConfig {
        enabled: true,
        listen: srv.to_string().into(),
        root: dir.path().into(),
        max_transfers_per_client: limit,
        ..Default::default()
    };
    // The allow-list as a head has it (loopback is answered).
    let (_tx, view) = watch::channel(Arc::new(BootView::from_state(&State::default(), 0)));
    let allow = Arc::new(wulfpack::boot::allow::Allow::new(view, vec![]));
    let stop = CancellationToken::new();
    let server = tokio::spawn(tftp::run(sock, cfg, Some(allow), stop.clone().cancelled_owned()));

    // A holds `limit` transfers open.
    let held: Vec<Held> = (0..limit).map(|_| start_transfer(A, srv)).collect();
    // Its next request is refused with a TFTP error that says why...
    let extra = udp_from(A);
    extra.send_to(&rrq("f"), srv).unwrap();
    let (op, code, msg, _) = recv(&extra);
    let msg = String::from_utf8_lossy(&msg).trim_end_matches('\0').to_owned();
    assert_eq!((op, code), (5, 0), "ERROR, code 0: {msg}");
    assert!(msg.contains("too many transfers from this client"), "{msg}");
    // ...while B is served in the same moment, start to end.
    let b = tokio::task::spawn_blocking(move || finish(start_transfer(B, srv)))
        .await
        .unwrap();
    assert!(b == file, "B's file is whole");
    // A's transfers finish; then A is served again.
    for h in held {
        assert!(finish(h) == file);
    }
    let again = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = udp_from(A);
            s.send_to(&rrq("f"), srv).unwrap();
            let (op, block, rest, tid) = recv(&s);
            if op == 3 {
                assert_eq!(block, 1);
                return finish(Held {
                    sock: s,
                    tid,
                    got: rest,
                });
            }
            // The last transfer's thread may not have given its place back yet.
            assert!(Instant::now() < deadline, "A never served again");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(again == file);
    stop.cancel();
    server.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------
// HTTP

const NODES: &str = r#"
nodes:
  n1:
    image name: big
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:01
"#;

fn apply(s: &mut State, index: u64, cmd: Cmd) {
    let r = s.apply(
        index,
        &Request {
            id: None,
            cmd,
            audit: None,
        },
    );
    assert!(r.0.is_ok(), "{r:?}");
}

struct Http {
    addr: SocketAddr,
    limit: Arc<PerClient>,
    image: Vec<u8>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A head's boot routes with a `max`-per-client limit, served by the head's listener
/// with `conn` limits. Node n1 boots a 48 MiB image: far more than the socket buffers
/// hold, so a client that stops reading keeps its transfer in flight.
async fn http(max: usize, conn: ConnLimits) -> Http {
    http_or_https(max, conn, None).await
}

/// As [`http`], over TLS with `tls` (a head's node-facing server config) when given.
async fn http_or_https(max: usize, conn: ConnLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Http {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    let image = data(48 << 20);
    let digest = cas.put_bytes(&image).unwrap();
    let mut s = State::default();
    apply(
        &mut s,
        1,
        Cmd::Init {
            name: "lab".into(),
            default_profile: None,
        },
    );
    apply(
        &mut s,
        2,
        Cmd::Import {
            conf: model::parse_nodes_conf(NODES).unwrap(),
        },
    );
    apply(
        &mut s,
        3,
        Cmd::Image(ImageCommand::Put {
            name: "big".into(),
            entry: Box::new(ImageEntry {
                source: "dir:/test".into(),
                platform: "linux/amd64".into(),
                layers: vec![],
                config: None,
                rootfs_size: 0,
                files: 0,
                artifact: Some(Artifact {
                    uncompressed: 0,
                    digest,
                    size: image.len() as u64,
                    build_key: "test".into(),
                }),
                kernel: None,
                kernels: vec![],
                created: 0,
                updated: 0,
            }),
            expect: None,
        }),
    );
    let (tx, view) = watch::channel(Arc::new(BootView::from_state(&s, 3)));
    let mut boot = BootHttp::new(view.clone(), cas.clone(), Arc::new(StatusBoard::new()), 1);
    let limit = PerClient::new(max, "HTTP boot", "boot.http.max_transfers_per_client");
    boot.per_client = Some(limit.clone());
    // The allow-list as a head has it (loopback is answered).
    boot.allow = Some(Arc::new(wulfpack::boot::allow::Allow::new(view, vec![])));
    let app = router(boot).merge(wulfpack::cas::http::router(cas));
    let listener = tokio::net::TcpListener::bind((ip(A), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let st = stop.clone();
    tokio::spawn(async move {
        let _tx = tx;
        match tls {
            None => wulfpack::cas::zerocopy::serve_with(listener, app, conn, st.cancelled_owned()).await,
            Some(tls) => wulfpack::boot::http::tls::serve_tls(listener, tls, app, conn, st).await,
        }
        .unwrap();
    });
    Http {
        addr,
        limit,
        image,
        stop,
        _dir: dir,
    }
}

/// A TCP connection to `srv` from `from`.
async fn connect(from: &str, srv: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(ip(from), 0)).unwrap();
    s.connect(srv).await.unwrap()
}

/// Send `req` and read up to the end of the response head: the status and the head
/// (over TCP or TLS).
async fn head_of<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut S, req: &[u8]) -> (u16, String) {
    c.write_all(req).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut byte))
            .await
            .expect("a response head within 10 s")
            .unwrap_or(0);
        assert!(n == 1, "connection closed before a response head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    (head[9..12].parse().unwrap(), head)
}

/// Write a header a byte every 100 ms on `slow` (a minute's worth); when a write fails
/// (the server closed it), how long after `since`; None if it never did.
fn dribble<S>(mut slow: S, since: Instant) -> tokio::task::JoinHandle<Option<Duration>>
where
    S: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        for b in "X-Slow: ".bytes().chain(std::iter::repeat_n(b'a', 600)) {
            if slow.write_all(&[b]).await.is_err() || slow.flush().await.is_err() {
                return Some(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: head\r\n\r\n").into_bytes()
}

fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip(from)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_a_client_over_its_limit_with_503_while_another_is_served() {
    let limit = 3;
    let h = http(limit, ConnLimits::default()).await;
    let url = |p: &str| format!("http://{}{p}", h.addr);
    // A starts `limit` image downloads and stops reading: all in flight.
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut c = connect(A, h.addr).await;
        let (st, _) = head_of(&mut c, &get(&format!("/image/{MAC}"))).await;
        assert_eq!(st, 200);
        held.push(c);
    }
    assert_eq!(h.limit.in_flight(ip(A)), limit);
    // A's next request: 503, Retry-After, and a body that says why.
    let r = client_from(A).get(url(&format!("/ipxe/{MAC}"))).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let body = r.text().await.unwrap();
    assert!(body.contains("too many transfers from this client"), "{body}");
    assert_eq!(h.limit.refused(), 1, "counted (and logged)");
    // B in the same moment: its script and the whole image.
    let b = client_from(B);
    let r = b.get(url(&format!("/ipxe/{MAC}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = b.get(url(&format!("/image/{MAC}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == h.image, "B's image is whole");
    assert_eq!(h.limit.in_flight(ip(A)), limit, "A's downloads were still in flight");
    // A's downloads end (it goes away): A is served again.
    drop(held);
    let a = client_from(A);
    wait_until(10, "A served again", async || {
        a.get(url(&format!("/ipxe/{MAC}")))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let r = a.get(url(&format!("/image/{MAC}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == h.image);
    assert_eq!(h.limit.in_flight(ip(A)), 0, "every place given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_disconnected_while_a_normal_client_is_served() {
    let timeout = Duration::from_secs(2);
    let h = http(
        8,
        ConnLimits {
            header_read_timeout: timeout,
            ..ConnLimits::default()
        },
    )
    .await;
    // A silent connection, and one that dribbles a header a byte every 100 ms (it
    // would take a minute to finish).
    let mut silent = connect(A, h.addr).await;
    let mut slow = connect(A, h.addr).await;
    let t0 = Instant::now();
    slow.write_all(format!("GET /ipxe/{MAC} HTTP/1.1\r\nHost: head\r\n").as_bytes())
        .await
        .unwrap();
    let dribble = dribble(slow, t0);
    // Meanwhile a normal client (from the same address) is served, more than once.
    let c = client_from(A);
    for _ in 0..3 {
        let r = c.get(format!("http://{}/ipxe/{MAC}", h.addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The silent one is closed within the bound (EOF, nothing sent).
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(timeout + Duration::from_secs(3), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed within the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        t0.elapsed() >= timeout - Duration::from_millis(200),
        "not before the timeout"
    );
    // The dribbling one: its writes fail soon after the timeout (the server closed it).
    let cut = tokio::time::timeout(Duration::from_secs(15), dribble)
        .await
        .expect("the dribbling client is cut off")
        .unwrap()
        .expect("cut before it finished its header");
    assert!(
        cut < timeout + Duration::from_secs(3),
        "cut {cut:?} after it started, the bound is {timeout:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431_and_the_server_keeps_serving() {
    let h = http(8, ConnLimits::default()).await;
    let max = ConnLimits::default().max_head_bytes;
    assert_eq!(max, BootHttpConfig::default().max_head_bytes);
    // One big header, many headers, a long URI: all over the limit.
    let big_header = format!(
        "GET /ipxe/{MAC} HTTP/1.1\r\nHost: head\r\nX-Big: {}\r\n\r\n",
        "a".repeat(max)
    );
    let many: String = (0..(max / 16)).map(|i| format!("X-H{i:05}: 1234\r\n")).collect();
    let many = format!("GET /ipxe/{MAC} HTTP/1.1\r\nHost: head\r\n{many}\r\n");
    let long_uri = format!("GET /ipxe/{MAC}?pad={} HTTP/1.1\r\nHost: head\r\n\r\n", "b".repeat(max));
    for (what, req) in [
        ("a big header", big_header),
        ("many headers", many),
        ("a long URI", long_uri),
    ] {
        let mut c = connect(A, h.addr).await;
        c.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .unwrap_or_else(|_| panic!("{what}: the server closes the connection"))
            .ok();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 414"),
            "{what}: {text}"
        );
        // And the server keeps serving, from the same address.
        let r = client_from(A)
            .get(format!("http://{}/ipxe/{MAC}", h.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "after {what}");
    }
    // A head comfortably under the limit is fine (a long query of a real client).
    let mut c = connect(B, h.addr).await;
    let ok = format!(
        "GET /ipxe/{MAC}?uuid={} HTTP/1.1\r\nHost: head\r\nUser-Agent: iPXE/1.21.1\r\n\r\n",
        "c".repeat(max / 2)
    );
    let (st, _) = head_of(&mut c, ok.as_bytes()).await;
    assert_eq!(st, 200);
}

/// The boot listener over HTTPS (`https_listen`, what `wwclient` uses) keeps the same
/// limits as plain HTTP: a connection that never sends a ClientHello is closed within the
/// handshake bound, one that dribbles its request head within the header timeout, an
/// oversized head gets 431, a client over its transfer limit gets 503, and another
/// client is served all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_listener_keeps_the_same_limits_as_http() {
    use wulfpack::pki::{tls, Ca, Role};
    let ca = Ca::create("lab").unwrap();
    let head = ca.issue("head-1", Role::Head, 30).unwrap();
    let live = tls::LiveCert::new(&ca.cert_pem, &head.cert_pem, &head.key_pem).unwrap();
    let timeout = Duration::from_secs(2);
    let limit = 2;
    let h = http_or_https(
        limit,
        ConnLimits {
            header_read_timeout: timeout,
            ..ConnLimits::default()
        },
        Some(tls::node_server_config(live).unwrap()),
    )
    .await;
    let connector = tokio_rustls::TlsConnector::from(tls::node_client_config(&ca.cert_pem).unwrap());
    let tls_from = async |from: &str| {
        let tcp = connect(from, h.addr).await;
        connector.connect("head".try_into().unwrap(), tcp).await.unwrap()
    };
    // A TCP connection that never starts TLS, and a TLS one that dribbles its head.
    let t0 = Instant::now();
    let mut silent = connect(A, h.addr).await;
    let silent = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf)).await;
        (n.map(|r| r.unwrap_or(0)), t0.elapsed())
    });
    let mut slow = tls_from(A).await;
    slow.write_all(format!("GET /ipxe/{MAC} HTTP/1.1\r\nHost: head\r\n").as_bytes())
        .await
        .unwrap();
    let dribble = dribble(slow, Instant::now());
    // Meanwhile B is served over TLS.
    let mut b = tls_from(B).await;
    let (st, _) = head_of(&mut b, &get(&format!("/ipxe/{MAC}"))).await;
    assert_eq!(st, 200);

    // An oversized request head: 431, and the listener goes on serving.
    let max = ConnLimits::default().max_head_bytes;
    let mut big = tls_from(B).await;
    let req = format!(
        "GET /ipxe/{MAC} HTTP/1.1\r\nHost: head\r\nX-Big: {}\r\n\r\n",
        "a".repeat(max)
    );
    let (st, _) = head_of(&mut big, req.as_bytes()).await;
    assert_eq!(st, 431);

    // A holds `limit` image downloads (reading only their heads): its next request is
    // refused with 503 and Retry-After; B is served in the same moment.
    let mut held = Vec::new();
    for _ in 0..limit {
        let mut c = tls_from(A).await;
        let (st, _) = head_of(&mut c, &get(&format!("/image/{MAC}"))).await;
        assert_eq!(st, 200);
        held.push(c);
    }
    assert_eq!(h.limit.in_flight(ip(A)), limit);
    let mut a = tls_from(A).await;
    let (st, head) = head_of(&mut a, &get(&format!("/ipxe/{MAC}"))).await;
    assert_eq!(st, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    let mut b2 = tls_from(B).await;
    let (st, _) = head_of(&mut b2, &get(&format!("/ipxe/{MAC}"))).await;
    assert_eq!(st, 200);
    drop(held);
    wait_until(10, "A's places given back", async || h.limit.in_flight(ip(A)) == 0).await;

    // The silent connection was closed (EOF, nothing sent) within the handshake bound (5 s).
    let (n, closed) = silent.await.unwrap();
    assert_eq!(
        n.expect("the silent connection is closed within 15 s"),
        0,
        "closed without an answer"
    );
    assert!(
        closed < Duration::from_secs(7),
        "closed after {closed:?}; the handshake bound is 5 s"
    );
    // The dribbling one is cut soon after the header timeout.
    let cut = tokio::time::timeout(Duration::from_secs(15), dribble)
        .await
        .expect("the dribbling client is cut off")
        .unwrap()
        .expect("cut before it finished its header");
    assert!(
        cut < timeout + Duration::from_secs(3),
        "cut {cut:?} after it started, the bound is {timeout:?}"
    );
}
