//! Unit tests: URI and platform parsing, manifest selection, and archives built here byte by
//! byte for the cases real tools rarely produce (damage, gzip docker layers, nested indexes,
//! links inside the archive). The real-tool tests live in `tests/it/oci.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::json;

use super::*;

fn store() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

fn amd64() -> Platform {
    Platform::parse("linux/amd64").unwrap()
}

async fn pull_quiet(source: &Source, cas: &Cas, platform: &Platform) -> Result<Pulled, OciError> {
    pull(source, cas, platform, &|_| {}).await
}

/// What a tar member is.
enum M<'a> {
    File(&'a str, Vec<u8>),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn write_tar(path: &Path, members: &[M<'_>]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for m in members {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match m {
            M::File(name, data) => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
            M::Symlink(name, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            M::Hardlink(name, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
        }
    }
    b.finish().unwrap();
}

/// An uncompressed layer tar holding one file.
fn layer_tar(file: &str, content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, file, content.as_bytes()).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn blob_path(bytes: &[u8]) -> String {
    format!("blobs/sha256/{}", Digest::of(bytes).hex())
}

fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len()})
}

fn config_json(arch: &str, diff_ids: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(|d| Digest::of(d).to_string()).collect();
    serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": ids}}))
        .unwrap()
}

/// One platform image: (config, manifest, layers as stored (gzip), uncompressed layers).
struct Img {
    config: Vec<u8>,
    manifest: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

fn image(arch: &str, files: &[(&str, &str)]) -> Img {
    let plain: Vec<Vec<u8>> = files.iter().map(|(f, c)| layer_tar(f, c)).collect();
    let layers: Vec<Vec<u8>> = plain.iter().map(|p| gzip(p)).collect();
    let config = config_json(arch, &plain.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": desc(MEDIA_TYPE_OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| desc(MEDIA_TYPE_LAYER_GZIP, l)).collect::<Vec<_>>(),
    }))
    .unwrap();
    Img {
        config,
        manifest,
        layers,
    }
}

fn blobs_of(img: &Img) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        (blob_path(&img.config), img.config.clone()),
        (blob_path(&img.manifest), img.manifest.clone()),
    ];
    for l in &img.layers {
        v.push((blob_path(l), l.clone()));
    }
    v
}

fn oci_archive(dir: &Path, index: &serde_json::Value, blobs: &[(String, Vec<u8>)]) -> PathBuf {
    let path = dir.join("image-oci.tar");
    let index = serde_json::to_vec(index).unwrap();
    let mut members = vec![
        M::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        M::File("index.json", index),
    ];
    for (name, bytes) in blobs {
        members.push(M::File(name, bytes.clone()));
    }
    write_tar(&path, &members);
    path
}

fn single_index(img: &Img) -> serde_json::Value {
    let mut d = desc(MEDIA_TYPE_OCI_MANIFEST, &img.manifest);
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    json!({"schemaVersion": 2, "manifests": [d]})
}

// --- URIs and platforms -----------------------------------------------------------------

#[test]
fn uri_forms() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let reg = |r: &str, insecure| Source::Registry {
        reference: r.into(),
        insecure,
        auth: None,
    };
    assert_eq!(
        Source::parse("docker://127.0.0.1:5000/test/bb:latest", true, None).unwrap(),
        reg("127.0.0.1:5000/test/bb:latest", true)
    );
    assert_eq!(
        Source::parse("docker://rockylinux/rockylinux:9", false, None).unwrap(),
        reg("rockylinux/rockylinux:9", false)
    );
    let auth = Some(("u".to_string(), "p".to_string()));
    assert!(matches!(
        Source::parse("docker://h/r@sha256:0123456789012345678901234567890123456789012345678901234567890123", false, auth.clone()).unwrap(),
        Source::Registry { auth: a, .. } if a == auth
    ));
    for uri in ["oci-archive:/x/y.tar", "oci-archive:///x/y.tar"] {
        assert_eq!(
            Source::parse(uri, false, None).unwrap(),
            Source::OciArchive("/x/y.tar".into())
        );
    }
    assert_eq!(
        Source::parse("oci-archive:rel.tar", false, None).unwrap(),
        Source::OciArchive("rel.tar".into())
    );
    assert_eq!(
        Source::parse("docker-archive:/x/y.tar", false, None).unwrap(),
        Source::DockerArchive("/x/y.tar".into())
    );
    assert_eq!(Source::parse(d, false, None).unwrap(), Source::Directory(d.into()));
    assert_eq!(
        Source::parse(&format!("dir:{d}"), false, None).unwrap(),
        Source::Directory(d.into())
    );
    assert_eq!(
        Source::parse(&format!("dir://{d}"), false, None).unwrap(),
        Source::Directory(d.into())
    );
    assert_eq!(Source::OciArchive("/a.tar".into()).to_string(), "oci-archive:/a.tar");
    let file = dir.path().join("img.tar");
    std::fs::write(&file, "").unwrap();
    let e = Source::parse(&format!("oci-archive:{}:latest", file.display()), false, None).unwrap_err();
    assert!(e.to_string().contains("by name is not supported"), "{e}");
    for bad in [
        "",
        "  ",
        "quay.io/a/b:1",
        "docker://",
        "docker://a/B",
        "http://x/y",
        "oci-archive:",
        "dir:",
    ] {
        let e = Source::parse(bad, false, None).unwrap_err();
        assert!(matches!(e, OciError::BadUri { .. }), "{bad}: {e}");
        assert!(e.to_string().contains(ACCEPTED_FORMS), "{bad}: {e}");
    }
}

#[test]
fn platforms() {
    let p = Platform::parse("linux/arm64/v8").unwrap();
    assert_eq!(
        (p.os.as_str(), p.arch.as_str(), p.variant.as_deref()),
        ("linux", "arm64", Some("v8"))
    );
    assert_eq!(p.to_string(), "linux/arm64/v8");
    assert_eq!(Platform::parse("Linux/x86_64").unwrap(), amd64());
    assert_eq!(Platform::parse("linux/aarch64").unwrap().arch, "arm64");
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", ""] {
        let e = Platform::parse(bad).unwrap_err();
        assert!(e.to_string().contains("OS/ARCH"), "{bad}: {e}");
    }
    let host = Platform::host();
    assert_eq!(host.os, "linux");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(host.to_string(), "linux/amd64");
    }
    if cfg!(target_arch = "aarch64") {
        assert_eq!(host.to_string(), "linux/arm64");
    }
    // arm64's implicit variant is v8; a wanted variant must match; none wanted accepts any.
    let v8 = Platform::parse("linux/arm64/v8").unwrap();
    assert!(v8.matches("linux", "arm64", None));
    assert!(v8.matches("linux", "arm64", Some("v8")));
    assert!(!v8.matches("linux", "arm64", Some("v9")));
    let arm = Platform::parse("linux/arm").unwrap();
    assert!(arm.matches("linux", "arm", Some("v7")));
    assert!(!Platform::parse("linux/arm/v6")
        .unwrap()
        .matches("linux", "arm", Some("v7")));
    assert!(!amd64().matches("windows", "amd64", None));
    assert!(amd64().matches("linux", "x86_64", None));
}

fn entry(arch: &str, variant: Option<&str>, digest_byte: u8) -> Descriptor {
    Descriptor {
        media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
        digest: Digest([digest_byte; 32]).to_string(),
        size: 1,
        platform: Some(PlatformJson {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(str::to_string),
        }),
        annotations: None,
    }
}

#[test]
fn manifest_selection() {
    let mut attestation = entry("unknown", None, 9);
    attestation.platform.as_mut().unwrap().os = "unknown".into();
    let entries = vec![
        entry("amd64", None, 1),
        entry("arm", Some("v6"), 2),
        entry("arm", Some("v7"), 3),
        entry("arm64", Some("v8"), 4),
        attestation,
    ];
    let pick = |p: &str| select_manifest(&entries, &Platform::parse(p).unwrap(), "img").map(|d| d.digest.clone());
    assert_eq!(pick("linux/amd64").unwrap(), entries[0].digest);
    assert_eq!(pick("linux/arm/v7").unwrap(), entries[2].digest);
    assert_eq!(pick("linux/arm64").unwrap(), entries[3].digest);
    let err = pick("linux/s390x").unwrap_err().to_string();
    assert!(
        err.contains("linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8") && !err.contains("unknown"),
        "{err}"
    );
    // A lone entry without a platform is the image.
    let mut lone = entry("amd64", None, 5);
    lone.platform = None;
    assert_eq!(
        select_manifest(
            std::slice::from_ref(&lone),
            &Platform::parse("linux/arm64").unwrap(),
            "img"
        )
        .unwrap()
        .digest,
        lone.digest
    );
    assert!(select_manifest(&[], &amd64(), "img").is_err());
}

#[test]
fn documents() {
    let schema1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
    let e = parse_document(schema1, "img", "the manifest").unwrap_err().to_string();
    assert!(e.contains("schema 1"), "{e}");
    let artifact = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": Digest::of(b"").to_string(), "size": 0},
        "layers": []});
    let e = parse_document(&serde_json::to_vec(&artifact).unwrap(), "img", "the manifest")
        .unwrap_err()
        .to_string();
    assert!(e.contains("artifact"), "{e}");
    let e = parse_document(b"not json", "img", "the manifest")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid JSON"), "{e}");
    let list = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_LIST, "manifests": []});
    assert!(matches!(
        parse_document(&serde_json::to_vec(&list).unwrap(), "img", "x").unwrap(),
        Document::Index(v) if v.is_empty()
    ));
    let docker = json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_DOCKER_CONFIG, "digest": Digest::of(b"c").to_string(), "size": 1},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": Digest::of(b"l").to_string(), "size": 1}]});
    assert!(matches!(
        parse_document(&serde_json::to_vec(&docker).unwrap(), "img", "x").unwrap(),
        Document::Manifest { layers, .. } if layers.len() == 1
    ));
    let sha512 = Descriptor {
        media_type: String::new(),
        digest: format!("sha512:{}", "a".repeat(128)),
        size: 0,
        platform: None,
        annotations: None,
    };
    assert!(sha512.cas_digest("img").unwrap_err().to_string().contains("sha256"));
}

#[test]
fn pull_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (_t, cas) = store();
    let src = Source::Directory("/nonexistent".into());
    let p = amd64();
    let progress = |_: PullProgress| {};
    let fut = pull(&src, &cas, &p, &progress);
    assert_send(&fut);
}

// --- OCI archives -----------------------------------------------------------------------

#[tokio::test]
async fn oci_archive_single_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image("amd64", &[("a", "one"), ("b", "two")]);
    let path = oci_archive(dir.path(), &single_index(&img), &blobs_of(&img));
    let (_t, cas) = store();
    let events = std::sync::Mutex::new(Vec::new());
    let pulled = pull(&Source::OciArchive(path.clone()), &cas, &amd64(), &|p| {
        events.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    assert_eq!(
        pulled.layers.iter().map(|l| l.digest).collect::<Vec<_>>(),
        img.layers.iter().map(|l| Digest::of(l)).collect::<Vec<_>>()
    );
    assert!(pulled.layers.iter().all(|l| l.media_type == MEDIA_TYPE_LAYER_GZIP));
    assert_eq!(pulled.config, Some(Digest::of(&img.config)));
    assert_eq!(pulled.manifest, Some(Digest::of(&img.manifest)));
    assert_eq!(pulled.platform, "linux/amd64");
    assert_eq!(
        pulled.source,
        format!("oci-archive:{}@{}", path.display(), Digest::of(&img.manifest))
    );
    for l in &img.layers {
        assert_eq!(std::fs::read(cas.path(&Digest::of(l))).unwrap(), *l);
    }
    let events = events.into_inner().unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::Layer { index: 1, count: 2, done, total, .. } if done == total)));

    // Asked for another platform, the single-platform image is refused with a hint.
    let e = pull_quiet(
        &Source::OciArchive(path.clone()),
        &cas,
        &Platform::parse("linux/arm64").unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, OciError::WrongPlatform { .. }), "{e}");

    // Present layers are not copied again.
    let events = std::sync::Mutex::new(Vec::new());
    pull(&Source::OciArchive(path), &cas, &amd64(), &|p| {
        events.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    assert!(events
        .into_inner()
        .unwrap()
        .iter()
        .any(|e| matches!(e, PullProgress::Message(m) if m.contains("already in the store"))));
}

#[tokio::test]
async fn oci_archive_multi_platform_nested_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = image("amd64", &[("arch", "amd64")]);
    let b = image("arm64", &[("arch", "arm64"), ("more", "x")]);
    let mut da = desc(MEDIA_TYPE_OCI_MANIFEST, &a.manifest);
    da["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let mut db = desc(MEDIA_TYPE_OCI_MANIFEST, &b.manifest);
    db["platform"] = json!({"os": "linux", "architecture": "arm64", "variant": "v8"});
    let nested =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": [da, db]}))
            .unwrap();
    let top = json!({"schemaVersion": 2, "manifests": [desc(MEDIA_TYPE_OCI_INDEX, &nested)]});
    let mut blobs = blobs_of(&a);
    blobs.extend(blobs_of(&b));
    blobs.push((blob_path(&nested), nested.clone()));
    let path = oci_archive(dir.path(), &top, &blobs);
    let (_t, cas) = store();
    let src = Source::OciArchive(path);

    let arm = pull_quiet(&src, &cas, &Platform::parse("linux/arm64").unwrap())
        .await
        .unwrap();
    assert_eq!(arm.platform, "linux/arm64/v8");
    assert_eq!(arm.layers.len(), 2);
    assert_eq!(arm.manifest, Some(Digest::of(&b.manifest)));
    let x86 = pull_quiet(&src, &cas, &amd64()).await.unwrap();
    assert_eq!(x86.layers[0].digest, Digest::of(&a.layers[0]));
    let e = pull_quiet(&src, &cas, &Platform::parse("linux/ppc64le").unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("linux/amd64, linux/arm64/v8"), "{e}");
}

#[tokio::test]
async fn oci_archive_platforms_from_configs() {
    // Two manifests without declared platforms (as some tools write them): configs decide.
    let dir = tempfile::tempdir().unwrap();
    let a = image("amd64", &[("arch", "amd64")]);
    let b = image("arm64", &[("arch", "arm64")]);
    let top = json!({"schemaVersion": 2, "manifests": [desc(MEDIA_TYPE_OCI_MANIFEST, &a.manifest), desc(MEDIA_TYPE_OCI_MANIFEST, &b.manifest)]});
    let mut blobs = blobs_of(&a);
    blobs.extend(blobs_of(&b));
    let path = oci_archive(dir.path(), &top, &blobs);
    let (_t, cas) = store();
    let arm = pull_quiet(
        &Source::OciArchive(path),
        &cas,
        &Platform::parse("linux/arm64").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(arm.layers[0].digest, Digest::of(&b.layers[0]));
    assert_eq!(arm.platform, "linux/arm64");
}

#[tokio::test]
async fn oci_archive_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (_t, cas) = store();
    let img = image("amd64", &[("a", "one")]);

    // A layer blob whose bytes do not match its name.
    let mut blobs = blobs_of(&img);
    let layer_name = blob_path(&img.layers[0]);
    for (name, bytes) in blobs.iter_mut() {
        if *name == layer_name {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
    }
    let path = oci_archive(dir.path(), &single_index(&img), &blobs);
    let e = pull_quiet(&Source::OciArchive(path), &cas, &amd64()).await.unwrap_err();
    assert!(
        matches!(&e, OciError::Cas { source, .. } if matches!(**source, CasError::Mismatch { .. })),
        "{e}"
    );
    assert!(!cas.contains(&Digest::of(&img.layers[0])));

    // A missing layer blob.
    let blobs: Vec<_> = blobs_of(&img).into_iter().filter(|(n, _)| *n != layer_name).collect();
    let path = oci_archive(dir.path(), &single_index(&img), &blobs);
    let e = pull_quiet(&Source::OciArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(e, OciError::MissingInArchive { ref name, .. } if *name == layer_name),
        "{e}"
    );
    assert!(e.to_string().contains("incomplete"), "{e}");

    // A damaged manifest.
    let mut blobs = blobs_of(&img);
    blobs[1].1.push(b' ');
    let path = oci_archive(dir.path(), &single_index(&img), &blobs);
    let e = pull_quiet(&Source::OciArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");

    // A compressed archive file, a non-tar, a truncated tar.
    let good = oci_archive(dir.path(), &single_index(&img), &blobs_of(&img));
    let raw = std::fs::read(&good).unwrap();
    let gz = dir.path().join("image.tar.gz");
    std::fs::write(&gz, gzip(&raw)).unwrap();
    let e = pull_quiet(&Source::OciArchive(gz), &cas, &amd64()).await.unwrap_err();
    assert!(e.to_string().contains("decompress it"), "{e}");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar file at all").unwrap();
    let e = pull_quiet(&Source::OciArchive(junk), &cas, &amd64()).await.unwrap_err();
    assert!(matches!(e, OciError::BadArchive { .. }), "{e}");
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &raw[..raw.len() / 2]).unwrap();
    let e = pull_quiet(&Source::OciArchive(cut), &cas, &amd64()).await.unwrap_err();
    assert!(
        matches!(e, OciError::BadArchive { .. } | OciError::MissingInArchive { .. }),
        "{e}"
    );

    // Two images in one archive.
    let other = image("amd64", &[("b", "two")]);
    let mut d2 = desc(MEDIA_TYPE_OCI_MANIFEST, &other.manifest);
    d2["annotations"] = json!({"org.opencontainers.image.ref.name": "other"});
    let mut index = single_index(&img);
    index["manifests"].as_array_mut().unwrap().push(d2);
    let mut blobs = blobs_of(&img);
    blobs.extend(blobs_of(&other));
    let path = oci_archive(dir.path(), &index, &blobs);
    let e = pull_quiet(&Source::OciArchive(path), &cas, &amd64())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("several images (latest, other)"), "{e}");
}

// --- docker archives --------------------------------------------------------------------

#[tokio::test]
async fn docker_archive_legacy_links_and_gzip_layers() {
    let dir = tempfile::tempdir().unwrap();
    let plain0 = layer_tar("a", "one");
    let plain1 = layer_tar("b", "two");
    let gz1 = gzip(&plain1);
    let config = config_json("amd64", &[&plain0, &plain1]);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": ["test/x:1"],
        "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"],
    }]);
    let path = dir.path().join("docker.tar");
    write_tar(
        &path,
        &[
            M::File(&config_name, config.clone()),
            M::File("0000.tar", plain0.clone()),
            M::Symlink("aaaa/layer.tar", "../0000.tar"),
            M::File("1111.tar.gz", gz1.clone()),
            M::Hardlink("bbbb/layer.tar", "1111.tar.gz"),
            M::File("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ],
    );
    let (_t, cas) = store();
    let pulled = pull_quiet(&Source::DockerArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap();
    assert_eq!(pulled.layers[0].digest, Digest::of(&plain0));
    assert_eq!(pulled.layers[0].media_type, MEDIA_TYPE_LAYER_TAR);
    assert_eq!(pulled.layers[1].digest, Digest::of(&gz1));
    assert_eq!(pulled.layers[1].media_type, MEDIA_TYPE_LAYER_GZIP);
    assert_eq!(pulled.layers[1].size, gz1.len() as u64);
    assert_eq!(pulled.config, Some(Digest::of(&config)));
    assert_eq!(pulled.platform, "linux/amd64");
    assert_eq!(pulled.manifest, None);
    assert!(pulled.source.starts_with("docker-archive:"));

    // A gzip layer that does not decompress to its diff_id is refused.
    let wrong = gzip(&layer_tar("b", "tampered"));
    write_tar(
        &path,
        &[
            M::File(&config_name, config.clone()),
            M::File("aaaa/layer.tar", plain0.clone()),
            M::File("bbbb/layer.tar", wrong),
            M::File("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ],
    );
    let e = pull_quiet(&Source::DockerArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("diff_id"), "{e}");

    // A plain layer that does not match its diff_id is refused by the CAS.
    write_tar(
        &path,
        &[
            M::File(&config_name, config.clone()),
            M::File("aaaa/layer.tar", layer_tar("a", "tampered")),
            M::File("bbbb/layer.tar", gz1.clone()),
            M::File("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ],
    );
    let e = pull_quiet(&Source::DockerArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OciError::Cas { source, .. } if matches!(**source, CasError::Mismatch { .. })),
        "{e}"
    );

    // Broken gzip.
    let mut broken = gz1.clone();
    broken.truncate(broken.len() / 2);
    write_tar(
        &path,
        &[
            M::File(&config_name, config.clone()),
            M::File("aaaa/layer.tar", plain0.clone()),
            M::File("bbbb/layer.tar", broken),
            M::File("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ],
    );
    let e = pull_quiet(&Source::DockerArchive(path.clone()), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(matches!(e, OciError::BadArchive { .. }), "{e}");

    // A symlink loop.
    write_tar(
        &path,
        &[
            M::File(&config_name, config.clone()),
            M::Symlink("aaaa/layer.tar", "../bbbb/layer.tar"),
            M::Symlink("bbbb/layer.tar", "../aaaa/layer.tar"),
            M::File("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ],
    );
    let e = pull_quiet(&Source::DockerArchive(path), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("chain of more than"), "{e}");
}

#[tokio::test]
async fn docker_archive_with_several_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    let mut entries = Vec::new();
    let mut keep = Vec::new();
    for (arch, tag) in [("amd64", "x:amd"), ("arm64", "x:arm")] {
        let plain = layer_tar("arch", arch);
        let config = config_json(arch, &[&plain]);
        keep.push((format!("{arch}.json"), config, format!("{arch}/layer.tar"), plain));
        entries.push(
            json!({"Config": format!("{arch}.json"), "RepoTags": [tag], "Layers": [format!("{arch}/layer.tar")]}),
        );
    }
    for (cn, c, ln, l) in &keep {
        members.push(M::File(cn, c.clone()));
        members.push(M::File(ln, l.clone()));
    }
    let manifest = serde_json::to_vec(&entries).unwrap();
    members.push(M::File("manifest.json", manifest));
    let path = dir.path().join("docker.tar");
    write_tar(&path, &members);
    let (_t, cas) = store();
    let arm = pull_quiet(
        &Source::DockerArchive(path.clone()),
        &cas,
        &Platform::parse("linux/arm64").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(arm.layers[0].digest, Digest::of(&keep[1].3));
    let e = pull_quiet(
        &Source::DockerArchive(path),
        &cas,
        &Platform::parse("linux/riscv64").unwrap(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("x:amd (linux/amd64)") && e.contains("x:arm (linux/arm64)"),
        "{e}"
    );
}

// --- directories ------------------------------------------------------------------------

#[tokio::test]
async fn directory_layer_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("b/c")).unwrap();
    std::fs::write(root.join("b/c/file"), "x".repeat(3 << 20)).unwrap();
    std::fs::write(root.join("a"), "a").unwrap();
    std::fs::hard_link(root.join("a"), root.join("z")).unwrap();
    std::os::unix::fs::symlink("a", root.join("link")).unwrap();
    let (_t, cas) = store();
    let events = std::sync::Mutex::new(Vec::new());
    let one = pull(&Source::Directory(root.clone()), &cas, &amd64(), &|p| {
        events.lock().unwrap().push(p)
    })
    .await
    .unwrap();
    let two = pull_quiet(&Source::Directory(root.clone()), &cas, &amd64())
        .await
        .unwrap();
    assert_eq!(one, two);
    assert_eq!(one.platform, "linux/amd64");
    // Progress while tarring (total unknown), then the final digest.
    let events = events.into_inner().unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, PullProgress::Layer { total: 0, done, .. } if *done > 0)));
    assert!(
        matches!(events.last(), Some(PullProgress::Layer { digest, .. }) if *digest == one.layers[0].digest.to_string())
    );

    let names: Vec<String> = tar::Archive::new(cas.open_verified(&one.layers[0].digest).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["./", "a", "b/", "b/c/", "b/c/file", "link", "z"]);

    // Not a directory.
    let e = pull_quiet(&Source::Directory(root.join("a")), &cas, &amd64())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
}

#[test]
fn shrinking_file_is_an_error_not_a_corrupt_layer() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, "12345").unwrap();
    let mut r = dir::tests_support::exact(&f, 10);
    let mut out = Vec::new();
    let e = io::copy(&mut r, &mut out).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(e.to_string().contains("shrank"), "{e}");
}

#[test]
fn device_numbers() {
    // makedev(1, 3) and makedev(259, 1048575) in glibc's encoding.
    fn makedev(major: u64, minor: u64) -> u64 {
        ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }
    for (ma, mi) in [(1u32, 3u32), (7, 0), (259, 1_048_575), (4095, 255)] {
        let d = makedev(ma.into(), mi.into());
        assert_eq!(dir::tests_support::split_dev(d), (ma, mi));
    }
}

#[test]
fn cancelled_import_stops_and_leaves_nothing() {
    let (_t, cas) = store();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let cancelled = Reporter {
        tx: None,
        cancel: Arc::new(AtomicBool::new(true)),
    };
    let e = dir::pull_directory(dir.path(), &cas, &amd64(), &cancelled).unwrap_err();
    assert!(matches!(e, OciError::Cancelled), "{e}");
    assert!(cas.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(cas.root().join("tmp")).unwrap().count(),
        0,
        "temp file left"
    );

    let img = image("amd64", &[("a", "one")]);
    let path = oci_archive(dir.path(), &single_index(&img), &blobs_of(&img));
    let e = archive::pull_oci_archive(&path, &cas, &amd64(), &cancelled).unwrap_err();
    assert!(matches!(e, OciError::Cancelled), "{e}");
    assert_eq!(
        std::fs::read_dir(cas.root().join("tmp")).unwrap().count(),
        0,
        "temp file left"
    );
}

#[tokio::test]
async fn dropping_the_pull_future_cancels_the_blocking_work() {
    let (_t, cas) = store();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..64 {
        std::fs::write(dir.path().join(format!("f{i}")), vec![0u8; 256 << 10]).unwrap();
    }
    let src = Source::Directory(dir.path().to_path_buf());
    let p = amd64();
    let r = tokio::time::timeout(std::time::Duration::from_millis(1), pull(&src, &cas, &p, &|_| {})).await;
    drop(r);
    // The blocking task sees the flag soon; whether it finished first or not, no temp file
    // stays and every stored blob is whole.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(cas.root().join("tmp")).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "temp file left behind");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for b in cas.list().unwrap() {
        cas.verify(&b.digest).unwrap();
    }
}

/// Fuzzing (issue 12, part 6): manifests and indexes as a registry or an archive may
/// serve them — fields missing, of the wrong type, unknown media types and schema
/// versions, digests that are not sha256 or try to name paths — parse or are refused;
/// nothing panics, and a descriptor's digest becomes a store name only when it is a
/// valid sha256 digest (64 hex digits).
mod fuzz {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn digest() -> impl Strategy<Value = Value> {
        prop_oneof![
            "sha256:[0-9a-f]{64}".prop_map(Value::from),
            Just(Value::from("sha256:../../etc/passwd")),
            Just(Value::from("sha512:abcd")),
            "[ -~]{0,70}".prop_map(Value::from),
            Just(Value::from(17)),
            Just(Value::Null),
        ]
    }

    fn media_type() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::from(MEDIA_TYPE_OCI_MANIFEST)),
            Just(Value::from(MEDIA_TYPE_OCI_INDEX)),
            Just(Value::from(MEDIA_TYPE_DOCKER_MANIFEST)),
            Just(Value::from(MEDIA_TYPE_DOCKER_LIST)),
            Just(Value::from(MEDIA_TYPE_OCI_CONFIG)),
            Just(Value::from("application/vnd.oci.image.layer.v1.tar+gzip")),
            Just(Value::from("application/vnd.example.artifact")),
            "[ -~]{0,30}".prop_map(Value::from),
            Just(Value::Null),
        ]
    }

    fn descriptor() -> impl Strategy<Value = Value> {
        (
            media_type(),
            digest(),
            prop_oneof![
                any::<u64>().prop_map(Value::from),
                Just(Value::from(-1)),
                Just(Value::from("x"))
            ],
            prop_oneof![
                Just(Value::Null),
                Just(serde_json::json!({"os": "linux", "architecture": "amd64"})),
                Just(serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
                Just(serde_json::json!({"os": "unknown", "architecture": "unknown"})),
                Just(serde_json::json!({"os": 1})),
            ],
        )
            .prop_map(|(m, d, s, p)| serde_json::json!({"mediaType": m, "digest": d, "size": s, "platform": p}))
    }

    fn document() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just(Value::from(2)), Just(Value::from(1)), Just(Value::from(3)), Just(Value::Null), Just(Value::from("2"))],
            media_type(),
            prop_oneof![Just(Value::Null), descriptor()],
            prop_oneof![Just(Value::Null), proptest::collection::vec(descriptor(), 0..4).prop_map(Value::from)],
            prop_oneof![Just(Value::Null), proptest::collection::vec(descriptor(), 0..4).prop_map(Value::from)],
        )
            .prop_map(|(v, m, c, l, ms)| {
                serde_json::json!({"schemaVersion": v, "mediaType": m, "config": c, "layers": l, "manifests": ms})
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn manifests_parse_or_are_refused_and_only_valid_digests_name_blobs(doc in document()) {
            let bytes = serde_json::to_vec(&doc).unwrap();
            match parse_document(&bytes, "fuzz", "the manifest") {
                Ok(Document::Index(entries)) => {
                    if let Ok(d) = select_manifest(&entries, &amd64(), "fuzz") {
                        check_digest(d)?;
                    }
                }
                Ok(Document::Manifest { config, layers }) => {
                    check_digest(&config)?;
                    for l in &layers {
                        check_digest(l)?;
                    }
                }
                Err(_) => {}
            }
        }

        #[test]
        fn random_bytes_are_not_a_manifest(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_document(&bytes, "fuzz", "the manifest");
            let _ = ImageConfig::parse(&bytes, "fuzz");
        }
    }

    fn check_digest(d: &Descriptor) -> Result<(), TestCaseError> {
        if let Ok(cas) = d.cas_digest("fuzz") {
            let hex = d.digest.strip_prefix("sha256:").unwrap_or("");
            prop_assert!(
                hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                "{:?}",
                d.digest
            );
            prop_assert_eq!(cas.hex(), hex.to_ascii_lowercase());
        }
        Ok(())
    }
}
