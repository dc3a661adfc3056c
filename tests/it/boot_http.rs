//! The HTTP boot routes against an in-memory `BootView` and a temp CAS, served on
//! 127.0.0.1:0 merged with the blob router exactly as a head serves them: every
//! route and alias, `?wwid=`, `/provision`, asset keys, unknown MACs, kernel pins,
//! missing images and blobs, Range and conditional requests, `/status`, golden iPXE
//! scripts, and `curl` as a real client. Served through the head's listener
//! (`cas::zerocopy::serve`), so every blob body here goes out by `sendfile(2)`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wulfpack::boot::http::{router, BootHttp};
use wulfpack::boot::status::{Stage, StatusBoard};
use wulfpack::boot::view::BootView;
use wulfpack::cas::{Cas, Digest};
use wulfpack::model;
use wulfpack::state::{Artifact, Command as Cmd, HeadInfo, ImageCommand, ImageEntry, KernelRef, Request, State};

const N1: &str = "aa:bb:cc:dd:ee:01";

const NODES: &str = r#"
nodeprofiles:
  default:
    image name: rocky9
    kernel:
      args: quiet crashkernel=no
nodes:
  n1:
    profiles: [default]
    network devices:
      default:
        hwaddr: AA:BB:CC:DD:EE:01
        ipaddr: 127.0.0.1
  n2:
    profiles: [default]
    asset key: s3cret
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:02
  n3:
    profiles: [default]
    kernel:
      version: 6.1.0-12
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:03
        ipaddr: 10.0.0.3
  n4:
    image name: ghost
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:04
  n5:
    profiles: [default]
    ipxe template: localdisk
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:05
  n6:
    image name: unbuilt
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:06
  n7:
    image name: lost
    network devices:
      default:
        hwaddr: aa:bb:cc:dd:ee:07
  vm:
    image name: rocky9
    kernel:
      args: console=ttyS0 panic=-1 quiet
    network devices:
      default:
        hwaddr: "52:54:00:12:34:56"
"#;

pub struct Boot {
    _dir: tempfile::TempDir,
    pub cas: Cas,
    pub base: String,
    pub addr: SocketAddr,
    pub status: Arc<StatusBoard>,
    pub kernel13: Vec<u8>,
    pub kernel12: Vec<u8>,
    pub image: Vec<u8>,
    pub image_digest: Digest,
    pub lost: Digest,
    pub missing_calls: Arc<Mutex<Vec<Digest>>>,
    /// `snponly.efi` in the iPXE directory `/efiboot/` serves.
    pub efi: Vec<u8>,
    stop: CancellationToken,
}

impl Drop for Boot {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

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

fn kref(digest: Digest, version: &str, size: usize) -> KernelRef {
    KernelRef {
        digest,
        version: version.into(),
        release: format!("{version}-amd64"),
        path: format!("boot/vmlinuz-{version}-amd64"),
        size: size as u64,
    }
}

fn entry(artifact: Option<(Digest, usize)>, kernels: Vec<KernelRef>) -> Box<ImageEntry> {
    Box::new(ImageEntry {
        source: "dir:/test".into(),
        platform: "linux/amd64".into(),
        layers: vec![],
        config: None,
        rootfs_size: 0,
        files: 0,
        artifact: artifact.map(|(digest, size)| Artifact {
            uncompressed: 0,
            digest,
            size: size as u64,
            build_key: "test".into(),
        }),
        kernel: kernels.first().cloned(),
        kernels,
        created: 0,
        updated: 0,
    })
}

/// A served head with the nodes above and a registered peer head.
pub async fn start() -> Boot {
    start_with(true, None).await
}

/// As [`start`]; without `peer`, this head is the only one registered (so a
/// script never points anywhere but here).
/// `real` replaces the default kernel and the image with real bytes.
pub async fn start_with(peer: bool, real: Option<(Vec<u8>, Vec<u8>)>) -> Boot {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    let (kernel13, image) = real.unwrap_or_else(|| {
        (
            (0..300_000u32).map(|i| (i % 13) as u8).collect(),
            // Several read chunks, and not a multiple of one.
            (0..700_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .collect(),
        )
    });
    let kernel12 = b"kernel 6.1.0-12".to_vec();
    let k13 = cas.put_bytes(&kernel13).unwrap();
    let k12 = cas.put_bytes(&kernel12).unwrap();
    let image_digest = cas.put_bytes(&image).unwrap();
    let lost = Digest::of(b"a blob no head has");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
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
    let put = |name: &str, e: Box<ImageEntry>| {
        Cmd::Image(ImageCommand::Put {
            name: name.into(),
            entry: e,
            expect: None,
        })
    };
    apply(
        &mut s,
        3,
        put(
            "rocky9",
            entry(
                Some((image_digest, image.len())),
                vec![
                    kref(k13, "6.1.0-13", kernel13.len()),
                    kref(k12, "6.1.0-12", kernel12.len()),
                ],
            ),
        ),
    );
    apply(&mut s, 4, put("unbuilt", entry(None, vec![kref(k13, "6.1.0-13", 1)])));
    apply(
        &mut s,
        5,
        put("lost", entry(Some((lost, 10)), vec![kref(lost, "6.1.0-1", 1)])),
    );
    apply(
        &mut s,
        6,
        Cmd::RegisterHead {
            id: 1,
            info: HeadInfo {
                http: addr.to_string(),
                ..Default::default()
            },
        },
    );
    if peer {
        apply(
            &mut s,
            7,
            Cmd::RegisterHead {
                id: 2,
                info: HeadInfo {
                    http: "10.9.9.2:9870".into(),
                    ..Default::default()
                },
            },
        );
    }
    let (_tx, view) = watch::channel(Arc::new(BootView::from_state(&s, 7)));
    let status = Arc::new(StatusBoard::new());
    let missing_calls = Arc::new(Mutex::new(Vec::new()));
    let mut boot = BootHttp::new(view, cas.clone(), status.clone(), 1);
    // The iPXE directory: one binary, and a symlink pointing out of it.
    let efi: Vec<u8> = (0..180_000u32).map(|i| (i % 251) as u8).collect();
    let efi_dir = dir.path().join("ipxe");
    std::fs::create_dir(&efi_dir).unwrap();
    std::fs::write(efi_dir.join("snponly.efi"), &efi).unwrap();
    std::fs::write(dir.path().join("secret"), b"SECRET-CONTENT").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), efi_dir.join("escape")).unwrap();
    boot.efi_dir = Some(wulfpack::boot::files::BootDir::new(&efi_dir).unwrap());
    let calls = missing_calls.clone();
    boot.on_missing_blob = Some(Arc::new(move |d| calls.lock().unwrap().push(d)));
    let app = router(boot).merge(wulfpack::cas::http::router(cas.clone()));
    let stop = CancellationToken::new();
    let st = stop.clone();
    tokio::spawn(async move {
        // Keep the view's sender alive as long as the server.
        let _tx = _tx;
        // The head's listener: blob bodies by sendfile(2).
        wulfpack::cas::zerocopy::serve(listener, app, st.cancelled_owned())
            .await
            .unwrap();
    });
    Boot {
        _dir: dir,
        cas,
        base: format!("http://{addr}"),
        addr,
        status,
        kernel13,
        kernel12,
        image,
        image_digest,
        lost,
        missing_calls,
        efi,
        stop,
    }
}

async fn get(b: &Boot, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    get_with(b, path, &[]).await
}

async fn get_with(b: &Boot, path: &str, headers: &[(&str, &str)]) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", b.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let (st, h) = (resp.status(), resp.headers().clone());
    (st, h, resp.bytes().await.unwrap().to_vec())
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[tokio::test]
async fn every_route_and_alias_answers() {
    let b = start().await;
    let (st, h, body) = get(&b, &format!("/ipxe/{N1}")).await;
    assert_eq!(st, StatusCode::OK, "{}", text(&body));
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain"));
    let script = text(&body);
    assert!(script.starts_with("#!ipxe"));
    assert!(script.contains(&format!("wwid={N1} quiet crashkernel=no")), "{script}");
    assert!(
        script.contains(&format!("{}/kernel/${{hwaddr}}", b.base)),
        "this head: {script}"
    );
    assert!(
        script.contains("http://10.9.9.2:9870/kernel/${hwaddr}"),
        "the peer head: {script}"
    );

    for path in [
        format!("/kernel/{N1}"),
        "/kernel/AA-BB-CC-DD-EE-01".into(),
        "/kernel?wwid=aa:bb:cc:dd:ee:01".into(),
        "/kernel/n1".into(),
        "/kernel".into(), // no wwid: found by the client's address (n1 is 127.0.0.1)
        format!("/provision/{N1}?stage=kernel"),
    ] {
        let (st, h, body) = get(&b, &path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {}", text(&body));
        assert_eq!(body, b.kernel13, "{path}");
        assert_eq!(h["accept-ranges"], "bytes");
        assert!(h["etag"].to_str().unwrap().starts_with("\"sha256:"));
    }
    for path in [
        format!("/image/{N1}"),
        format!("/image/{N1}?compress=gz"),
        format!("/container/{N1}"),
        format!("/provision/{N1}?stage=image&compress=gz"),
        format!("/provision/{N1}?stage=container"),
    ] {
        let (st, h, body) = get(&b, &path).await;
        assert_eq!(st, StatusCode::OK, "{path}: {}", text(&body));
        assert_eq!(body.len(), b.image.len(), "{path}");
        assert!(body == b.image, "{path}: bytes differ");
        assert_eq!(h["etag"], format!("\"{}\"", b.image_digest));
        assert_eq!(h["content-length"], b.image.len().to_string());
    }
    for path in [
        format!("/ipxe?wwid={N1}"),
        format!("/provision/{N1}"),
        format!("/provision/{N1}?stage=ipxe"),
        "/provision?wwid=n1".into(),
    ] {
        let (st, _, body) = get(&b, &path).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        assert!(text(&body).contains(&format!("wwid={N1}")), "{path}");
    }
    // This fixture has no overlay builder: system overlays are 404 saying so. Runtime
    // overlays are refused before that: secure mode, and this client's port is not
    // privileged.
    for path in [
        format!("/system/{N1}"),
        format!("/overlay-system/{N1}"),
        format!("/provision/{N1}?stage=system"),
    ] {
        let (st, _, body) = get(&b, &path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
        assert!(text(&body).contains("serves no overlays"), "{path}: {}", text(&body));
    }
    for path in [
        format!("/runtime/{N1}?compress=gz"),
        format!("/overlay-runtime/{N1}"),
        format!("/provision/{N1}?stage=runtime"),
    ] {
        let (st, _, body) = get(&b, &path).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}");
        assert!(text(&body).contains("privileged port"), "{path}: {}", text(&body));
    }
    let (st, _, body) = get(&b, &format!("/provision/{N1}?stage=grub")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(text(&body).contains("unknown stage \"grub\""));
    let (st, _, _) = get(&b, &format!("/ipxe/{N1}?compress=gz")).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "scripts are never compressed (as in Warewulf)"
    );
    let (st, _, _) = get(&b, &format!("/kernel/{N1}?compress=gz")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, _) = get(&b, &format!("/image/{N1}?compress=xz")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // HEAD: headers only.
    let r = reqwest::Client::new()
        .head(format!("{}/image/{N1}", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], b.image.len().to_string());

    // The blob router shares the listener.
    let (st, _, body) = get(&b, &format!("/blob/{}", b.image_digest)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == b.image);
}

#[tokio::test]
async fn asset_keys_are_enforced_and_recorded() {
    let b = start().await;
    for path in [
        "/kernel/aa:bb:cc:dd:ee:02",
        "/kernel/aa:bb:cc:dd:ee:02?assetkey=wrong",
        "/ipxe/aa:bb:cc:dd:ee:02?assetkey=",
    ] {
        let (st, _, body) = get(&b, path).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
        assert!(text(&body).contains("asset key"), "{path}");
    }
    let s = b.status.get("n2").unwrap();
    assert_eq!((s.stage, s.sent.as_str()), (Stage::BadAsset, "IPXE"));
    let (st, _, body) = get(&b, "/kernel/aa:bb:cc:dd:ee:02?assetkey=s3cret&uuid=4c4c4544-0042").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, b.kernel13);
    let s = b.status.get("n2").unwrap();
    assert_eq!(s.stage, Stage::Kernel);
    assert_eq!(s.uuid.as_deref(), Some("4c4c4544-0042"), "uuid recorded");
    assert_eq!(s.client.to_string(), "127.0.0.1");
}

#[tokio::test]
async fn efiboot_serves_the_ipxe_binary_for_uefi_http_boot() {
    let b = start().await;
    let (st, h, body) = get(&b, "/efiboot/snponly.efi").await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == b.efi, "byte-identical snponly.efi");
    let etag = h[reqwest::header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"sha256:{}\"", Digest::of(&b.efi).hex()));
    // UEFI firmware asks for the size first (HEAD); Range and revalidation work too.
    let head = reqwest::Client::new()
        .head(format!("{}/efiboot/snponly.efi", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[reqwest::header::CONTENT_LENGTH],
        b.efi.len().to_string().as_str()
    );
    let (st, _, body) = get_with(&b, "/efiboot/snponly.efi", &[("range", "bytes=10-19")]).await;
    assert_eq!((st, body.as_slice()), (StatusCode::PARTIAL_CONTENT, &b.efi[10..20]));
    let (st, _, _) = get_with(&b, "/efiboot/snponly.efi", &[("if-none-match", &etag)]).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    // A replaced binary (package upgrade) is served with its new digest, not a cached one.
    let newer: Vec<u8> = b.efi.iter().rev().copied().collect();
    std::fs::write(b._dir.path().join("ipxe/snponly.efi"), &newer).unwrap();
    let (st, h, body) = get(&b, "/efiboot/snponly.efi").await;
    assert_eq!(st, StatusCode::OK);
    assert!(body == newer, "the replaced file is served");
    assert_eq!(
        h[reqwest::header::ETAG].to_str().unwrap(),
        format!("\"sha256:{}\"", Digest::of(&newer).hex())
    );
    // The client's address is n1's: its status shows the EFI stage.
    let s = b.status.get("n1").unwrap();
    assert_eq!((s.stage, s.sent.as_str()), (Stage::Efi, "snponly.efi"));

    // Nothing outside the directory, nothing that is not there.
    for (path, want) in [
        ("/efiboot/escape", StatusCode::FORBIDDEN),
        ("/efiboot/..%2fsecret", StatusCode::FORBIDDEN),
        ("/efiboot/..%5csecret", StatusCode::FORBIDDEN),
        ("/efiboot/ipxe.efi", StatusCode::NOT_FOUND),
    ] {
        let (st, _, body) = get(&b, path).await;
        assert_eq!(st, want, "{path}: {}", text(&body));
        assert!(!text(&body).contains("SECRET-CONTENT"), "{path}");
    }
    let (_, _, body) = get(&b, "/efiboot/escape").await;
    assert!(
        text(&body).contains("outside the boot file directory"),
        "{}",
        text(&body)
    );
}

#[tokio::test]
async fn unknown_macs_get_the_unconfigured_script_and_nothing_else() {
    let b = start().await;
    let (st, _, body) = get(&b, "/ipxe/aa:bb:cc:00:00:99").await;
    assert_eq!(st, StatusCode::OK);
    assert!(text(&body).contains("HW address: aa:bb:cc:00:00:99"), "{}", text(&body));
    for path in [
        "/kernel/aa:bb:cc:00:00:99",
        "/image/aa:bb:cc:00:00:99",
        "/system/nosuchnode",
    ] {
        let (st, _, body) = get(&b, path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
        assert!(text(&body).contains("no node has wwid"), "{path}");
    }
    assert!(b.status.snapshot().is_empty(), "unknown MACs are not recorded");
}

#[tokio::test]
async fn kernel_pins_and_missing_images_and_blobs() {
    let b = start().await;
    let (st, _, body) = get(&b, "/kernel/aa:bb:cc:dd:ee:03").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, b.kernel12, "the pinned kernel.version");
    let (_, _, body) = get(&b, "/ipxe/aa:bb:cc:dd:ee:03").await;
    assert!(text(&body).contains("* Kernel: 6.1.0-12"));

    let (st, _, body) = get(&b, "/image/aa:bb:cc:dd:ee:04").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(
        text(&body).contains("image \"ghost\", which is not in the catalog"),
        "{}",
        text(&body)
    );
    let s = b.status.get("n4").unwrap();
    assert_eq!((s.stage, s.sent.as_str()), (Stage::Image, "NOT_FOUND"));

    let (st, _, body) = get(&b, "/image/aa:bb:cc:dd:ee:06").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(text(&body).contains("no built artifact"), "{}", text(&body));

    let (st, _, body) = get(&b, "/image/aa:bb:cc:dd:ee:07").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(text(&body).contains("requested from a peer"), "{}", text(&body));
    assert_eq!(
        *b.missing_calls.lock().unwrap(),
        [b.lost],
        "the daemon's hook hears of it"
    );

    // A corrupt blob is quarantined and treated as missing.
    let p = b.cas.path(&b.image_digest);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    let (st, _, _) = get(&b, &format!("/image/{N1}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(!p.exists(), "moved to corrupt/");
    assert_eq!(b.missing_calls.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn range_and_conditional_requests() {
    let b = start().await;
    let path = format!("/image/{N1}?compress=gz");
    let (st, h, body) = get_with(&b, &path, &[("range", "bytes=100-199")]).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &b.image[100..200]);
    assert_eq!(h["content-range"], format!("bytes 100-199/{}", b.image.len()));
    let (st, _, body) = get_with(&b, &path, &[("range", "bytes=262000-")]).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert!(body == b.image[262_000..], "an open range across chunk boundaries");
    let (st, _, body) = get_with(&b, &path, &[("range", "bytes=-10")]).await;
    assert_eq!(
        (st, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b.image[b.image.len() - 10..])
    );
    let (st, h, _) = get_with(&b, &path, &[("range", "bytes=9999999-")]).await;
    assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h["content-range"], format!("bytes */{}", b.image.len()));

    let tag = format!("\"{}\"", b.image_digest);
    let (st, h, body) = get_with(&b, &path, &[("if-none-match", &tag)]).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(h["etag"], tag.as_str());
    let (st, _, body) = get_with(&b, &path, &[("if-none-match", "\"sha256:00\"")]).await;
    assert_eq!((st, body.len()), (StatusCode::OK, b.image.len()));
    // If-Range: the range only if the client's copy is current.
    let (st, _, body) = get_with(&b, &path, &[("range", "bytes=0-9"), ("if-range", &tag)]).await;
    assert_eq!((st, body.len()), (StatusCode::PARTIAL_CONTENT, 10));
    let (st, _, body) = get_with(&b, &path, &[("range", "bytes=0-9"), ("if-range", "\"stale\"")]).await;
    assert_eq!((st, body.len()), (StatusCode::OK, b.image.len()));
}

/// HEAD answers the headers a GET would (length, ETag) and no body, for the image, the
/// kernel and a UEFI binary.
#[tokio::test]
async fn head_requests_answer_headers_only() {
    let b = start().await;
    let client = reqwest::Client::new();
    for (path, len) in [
        (format!("/image/{N1}"), b.image.len()),
        (format!("/kernel/{N1}"), b.kernel13.len()),
        ("/efiboot/snponly.efi".to_owned(), b.efi.len()),
    ] {
        let r = client.head(format!("{}{path}", b.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-length"], len.to_string().as_str(), "{path}");
        assert!(r.headers()["etag"].to_str().unwrap().starts_with("\"sha256:"), "{path}");
        assert!(r.bytes().await.unwrap().is_empty(), "{path}: no body");
        // The same client (its pooled connection) then gets the whole body.
        let (st, _, body) = get(&b, &path).await;
        assert_eq!((st, body.len()), (StatusCode::OK, len), "{path}");
    }
}

/// A blob that changes on disk after it was verified and served (its verification is
/// cached by size, mtime and inode) is verified again: the corrupt copy is never
/// served, it is quarantined and asked of a peer. (Corruption that keeps size, mtime
/// and inode is the scrub's to find: `cas::sync`.)
#[tokio::test]
async fn a_blob_corrupted_after_it_was_served_is_not_served_again() {
    let b = start().await;
    let path = format!("/image/{N1}");
    let (st, _, body) = get(&b, &path).await;
    assert!(st == StatusCode::OK && body == b.image, "served and verified once");
    let p = b.cas.path(&b.image_digest);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[123_456] ^= 0x01;
    // Rewritten in place (same inode), same size: only the mtime tells.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let (st, _, body) = get(&b, &path).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{}", text(&body));
    assert!(text(&body).contains("requested from a peer"), "{}", text(&body));
    assert!(!p.exists(), "moved to corrupt/");
    assert_eq!(*b.missing_calls.lock().unwrap(), [b.image_digest]);
    let (st, _, _) = get_with(&b, &path, &[("range", "bytes=0-9")]).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nor any range of it");
}

#[tokio::test]
async fn status_json_has_warewulfs_shape() {
    let b = start().await;
    get(&b, &format!("/ipxe/{N1}")).await;
    get(&b, &format!("/kernel/{N1}")).await;
    get(&b, &format!("/image/{N1}")).await;
    get(&b, "/kernel/aa:bb:cc:dd:ee:02").await;
    let (st, h, body) = get(&b, "/status").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(h["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let nodes = doc["nodes"].as_object().unwrap();
    assert_eq!(nodes.len(), 8, "every known node, seen or not");
    let n1 = nodes["n1"].as_object().unwrap();
    let mut keys: Vec<&str> = n1.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["ipaddr", "last seen", "node name", "sent", "stage"]);
    assert_eq!(n1["node name"], "n1");
    assert_eq!(n1["stage"], "IMAGE");
    assert_eq!(n1["sent"], "rocky9.img.gz");
    assert_eq!(n1["ipaddr"], "127.0.0.1");
    assert!(n1["last seen"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(nodes["n2"]["stage"], "BAD_ASSET");
    assert_eq!(nodes["n5"]["stage"], "");
    assert_eq!(nodes["n5"]["last seen"], 0);
    let mut seen: Vec<String> = b.status.snapshot().into_iter().map(|s| s.node).collect();
    seen.sort();
    assert_eq!(seen, ["n1", "n2"]);

    // n3 is 10.0.0.3: a request naming its MAC from 127.0.0.1 is served (boot files are
    // not secret) but does not make n3 look booted; it is in n3's history, marked.
    let (st, _, _) = get(&b, "/kernel/aa:bb:cc:dd:ee:03").await;
    assert_eq!(st, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&get(&b, "/status").await.2).unwrap();
    assert_eq!(doc["nodes"]["n3"]["stage"], "", "{doc}");
    assert!(b.status.get("n3").is_none());
    let only: std::collections::HashSet<String> = ["n3".to_string()].into();
    let h = b.status.history(Some(&only));
    assert_eq!(h.len(), 1);
    assert!(h[0].foreign && h[0].stage == Stage::Kernel, "{h:?}");
}

#[tokio::test]
async fn ipxe_scripts_match_golden_files() {
    let b = start().await;
    // A fixed Host so the head list is stable: this head as the client named it,
    // then the registered peer (this head's own registered address is not repeated).
    let host = [("host", "head1.lab:9870")];
    for (path, file) in [
        (format!("/ipxe/{N1}"), "ipxe_default.txt"),
        ("/ipxe/aa:bb:cc:00:00:99".into(), "ipxe_unconfigured.txt"),
        ("/ipxe/aa:bb:cc:dd:ee:05".into(), "ipxe_localdisk.txt"),
    ] {
        let (st, _, body) = get_with(&b, &path, &host).await;
        assert_eq!(st, StatusCode::OK, "{path}");
        crate::harness::golden(file, &text(&body));
    }
}

/// `curl` (a client nobody on this team wrote) fetches every route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_every_route() {
    if Command::new("curl").arg("--version").output().is_err() && !crate::registry::ensure_packages(&["curl"]) {
        eprintln!("SKIP: curl is not installed and cannot be installed here");
        return;
    }
    let b = start().await;
    let dir = tempfile::tempdir().unwrap();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let f = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let url = |p: &str| format!("{}{p}", b.base);
    assert_eq!(curl(&["-o", &f("script"), &url(&format!("/ipxe/{N1}"))]), "200");
    assert!(std::fs::read_to_string(f("script")).unwrap().contains("#!ipxe"));
    assert_eq!(curl(&["-o", &f("kernel"), &url(&format!("/kernel/{N1}"))]), "200");
    assert_eq!(std::fs::read(f("kernel")).unwrap(), b.kernel13);
    assert_eq!(
        curl(&[
            "-o",
            &f("image"),
            &url(&format!("/image/{N1}?compress=gz&assetkey=&uuid=x"))
        ]),
        "200"
    );
    assert!(std::fs::read(f("image")).unwrap() == b.image);
    // Resume a cut download (curl -C -: a Range from the size already on disk).
    std::fs::write(f("resume"), &b.image[..300_000]).unwrap();
    assert_eq!(
        curl(&["-C", "-", "-o", &f("resume"), &url(&format!("/image/{N1}"))]),
        "206"
    );
    assert!(
        std::fs::read(f("resume")).unwrap() == b.image,
        "resumed download is whole"
    );
    assert_eq!(
        curl(&["-o", &f("old"), &url(&format!("/provision/{N1}?stage=kernel"))]),
        "200"
    );
    assert_eq!(std::fs::read(f("old")).unwrap(), b.kernel13);
    assert_eq!(curl(&["-o", &f("efi"), &url("/efiboot/snponly.efi")]), "200");
    assert!(std::fs::read(f("efi")).unwrap() == b.efi);
    assert_eq!(curl(&["-o", "/dev/null", &url(&format!("/system/{N1}"))]), "404");
    assert_eq!(curl(&["-o", "/dev/null", &url(&format!("/runtime/{N1}"))]), "403");
    assert_eq!(curl(&["-o", &f("status"), &url("/status")]), "200");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(f("status")).unwrap()).unwrap();
    assert_eq!(doc["nodes"]["n1"]["stage"], "RUNTIME_OVERLAY");
    assert_eq!(doc["nodes"]["n1"]["sent"], "FORBIDDEN");
    assert_eq!(b.addr.ip().to_string(), "127.0.0.1");
}

/// A real iPXE (Debian's e1000 ROM in QEMU) boots through our script: QEMU's
/// user-mode network hands the ROM `http://10.0.2.2:PORT/ipxe/<mac>` as its boot
/// file (slirp's own DHCP inside QEMU; no DHCP server runs on any interface), and
/// 10.0.2.2 reaches this test's server on 127.0.0.1. The script loads the kernel
/// and image from us, skips the missing overlays, and the kernel runs the image's
/// `/init`, which prints a marker and the command line (`wwid=` and the node's
/// kernel args) on the serial console.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_ipxe_boots_the_image_through_the_script() {
    let Some(vmlinuz) = crate::qemu_node::qemu_boot_prerequisites("the QEMU boot test") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    for d in ["bin", "dev", "proc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let init = tree.join("init");
    std::fs::write(
        &init,
        "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox mount -t proc proc /proc\n\
         echo WULFPACK-INIT-OK > /dev/ttyS0\necho \"CMDLINE $(/bin/busybox cat /proc/cmdline)\" > /dev/ttyS0\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1")
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(cpio.status.success());
    let b = start_with(false, Some((std::fs::read(&vmlinuz).unwrap(), cpio.stdout))).await;
    let port = b.addr.port();
    let mac = "52:54:00:12:34:56";
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-boot", "n"])
        .args([
            "-netdev",
            &format!("user,id=n0,bootfile=http://10.0.2.2:{port}/ipxe/{mac}"),
            "-device",
            &format!("e1000,netdev=n0,mac={mac}"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start qemu");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(qemu.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut cmdline = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(240);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        if let Some(c) = line.strip_prefix("CMDLINE ") {
            cmdline = Some(c.trim().to_owned());
            break;
        }
        log.push(line);
    }
    let _ = qemu.kill().await;
    let log = log.join("\n");
    assert!(
        log.contains("WULFPACK-INIT-OK"),
        "no marker from /init; serial log:\n{log}"
    );
    let cmdline = cmdline.expect("the command line line");
    assert!(cmdline.contains(&format!("wwid={mac}")), "{cmdline}");
    assert!(cmdline.contains("console=ttyS0 panic=-1 quiet"), "{cmdline}");
    let st = b.status.get("vm").expect("the boot was recorded");
    assert_eq!(
        st.stage,
        Stage::RuntimeOverlay,
        "the last request was the runtime overlay"
    );
    assert_eq!(
        st.sent, "FORBIDDEN",
        "iPXE cannot prove it is the node (no privileged port)"
    );
}
