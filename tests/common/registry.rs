//! Test fixture: a real OCI registry and real test images.
//!
//! Why real programs: an importer tested only against data it wrote itself proves little.
//! Debian's `docker-registry` (the CNCF distribution registry) serves the images, `umoci`
//! builds them layer by layer (whiteouts included), and `skopeo` pushes them and exports the
//! same image as `oci-archive` and `docker-archive` files — the formats users bring.
//!
//! - [`ensure_packages`] installs what is missing (root only; `apt-get update` once per
//!   process; a `policy-rc.d` that forbids starting services first, so installing
//!   `docker-registry` does not start one on the host). Callers skip, with the printed
//!   reason, when it returns false.
//! - [`Registry`] runs `docker-registry serve` on 127.0.0.1 and a free port, storage and
//!   config in a temp dir, optionally with htpasswd (bcrypt, `htpasswd -B`) basic auth.
//!   Dropping it kills that process by its PID, waits for it and removes the temp dir.
//! - Everything a fixture runs is checked; a failing command panics with its stderr, since
//!   the fixture is only used once the packages are known present.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest as _;

/// The packages a registry test needs.
pub const REGISTRY_PACKAGES: &[&str] = &["docker-registry", "skopeo", "umoci"];

/// A running `docker-registry` on 127.0.0.1.
pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Basic-auth credentials the registry requires, if any.
    pub auth: Option<(String, String)>,
    child: Child,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous registry; `None` (reason printed) when it cannot run here.
    pub fn start() -> Option<Registry> {
        Registry::spawn(None)
    }

    /// A registry requiring `user`/`pass` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, pass: &str) -> Option<Registry> {
        Registry::spawn(Some((user.to_string(), pass.to_string())))
    }

    fn spawn(auth: Option<(String, String)>) -> Option<Registry> {
        let mut pkgs = REGISTRY_PACKAGES.to_vec();
        if auth.is_some() {
            pkgs.push("apache2-utils");
        }
        if !ensure_packages(&pkgs) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mut auth_yaml = String::new();
        if let Some((user, pass)) = &auth {
            let out = run(Command::new("htpasswd").args(["-B", "-b", "-n", user, pass]));
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, out.trim_end().to_string() + "\n").expect("write htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: wulfpack-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
                    dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("registry log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break; // exited: port taken? try another
                }
                if http_answers(&addr) {
                    return Some(Registry { addr, auth, child, dir });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    /// `--creds USER:PASS` for skopeo, if the registry needs them.
    fn skopeo_creds(&self, flag: &str) -> Vec<String> {
        match &self.auth {
            Some((u, p)) => vec![flag.to_string(), format!("{u}:{p}")],
            None => vec![],
        }
    }

    /// The raw manifest (or index) of `repo_ref` (`repo:tag` or `repo@digest`), via skopeo.
    pub fn manifest(&self, repo_ref: &str) -> serde_json::Value {
        let out = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .args(self.skopeo_creds("--creds"))
            .arg(format!("docker://{}/{repo_ref}", self.addr)));
        serde_json::from_str(&out).expect("manifest JSON")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill signals exactly this PID; wait reaps it before the temp dir goes.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

/// Does an HTTP server answer on `addr`?
fn http_answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n >= 5 && &buf[..5] == b"HTTP/")
}

/// Are we root? (Installing packages, device nodes and ownership need it.)
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

static APT_LOCK: Mutex<()> = Mutex::new(());
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Install the Debian packages that are missing. False (with the reason printed) when they
/// are missing and cannot be installed here.
pub fn ensure_packages(pkgs: &[&str]) -> bool {
    let _guard = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return true;
    }
    if !is_root() {
        eprintln!("SKIP: Debian packages {missing:?} are missing and installing them needs root");
        return false;
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        eprintln!("SKIP: Debian packages {missing:?} are missing and there is no apt-get");
        return false;
    }
    // Nothing installed here may start a service on the host.
    if let Err(e) = std::fs::write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n").and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions("/usr/sbin/policy-rc.d", std::fs::Permissions::from_mode(0o755))
    }) {
        eprintln!("SKIP: cannot write /usr/sbin/policy-rc.d ({e}); not installing {missing:?}");
        return false;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300", "-q"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    if !APT_UPDATED.load(Ordering::SeqCst) {
        match apt(&["update"]) {
            Ok(o) if o.status.success() => APT_UPDATED.store(true, Ordering::SeqCst),
            Ok(o) => {
                eprintln!(
                    "SKIP: apt-get update failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return false;
            }
            Err(e) => {
                eprintln!("SKIP: cannot run apt-get update: {e}");
                return false;
            }
        }
    }
    let mut args = vec!["install", "-y"];
    args.extend(&missing);
    match apt(&args) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIP: apt-get install {missing:?} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return false;
        }
        Err(e) => {
            eprintln!("SKIP: cannot run apt-get install: {e}");
            return false;
        }
    }
    let still: Vec<&str> = missing.into_iter().filter(|p| !installed(p)).collect();
    if !still.is_empty() {
        eprintln!("SKIP: packages {still:?} are still not installed after apt-get install");
        return false;
    }
    true
}

/// Run a command; panic with its output if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test image, pushed and exported.
pub struct TestImage {
    /// What `docker://` pulls: `127.0.0.1:PORT/REPO:TAG`.
    pub reference: String,
    /// `REPO:TAG` on the registry.
    pub repo_tag: String,
    /// The OCI layout the image was built in (tag = TAG).
    pub layout: PathBuf,
    /// `skopeo copy ... oci-archive:` of the image (all platforms).
    pub oci_archive: PathBuf,
    /// `skopeo copy ... docker-archive:` of the image (of the first platform, for a
    /// multi-platform image: a docker archive holds one).
    pub docker_archive: PathBuf,
    dir: tempfile::TempDir,
}

fn split_name(name: &str) -> (String, String) {
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (name.to_string(), "latest".to_string()),
    }
}

/// Add layers to `layout:tag`, one per closure (each fills the unpacked rootfs; deleting a
/// file of a lower layer makes umoci write a whiteout).
fn add_layers(dir: &Path, layout: &Path, tag: &str, layers: &[&dyn Fn(&Path)]) {
    let image = format!("{}:{tag}", layout.display());
    for (i, fill) in layers.iter().enumerate() {
        let bundle = dir.join(format!("bundle-{tag}-{i}"));
        let mut unpack = Command::new("umoci");
        unpack.arg("unpack");
        if !is_root() {
            unpack.arg("--rootless");
        }
        run(unpack.args(["--image", &image]).arg(&bundle));
        fill(&bundle.join("rootfs"));
        run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle));
        std::fs::remove_dir_all(&bundle).expect("remove bundle");
    }
}

fn push_and_export(
    reg: &Registry,
    dir: tempfile::TempDir,
    layout: PathBuf,
    repo: &str,
    tag: &str,
    first: &str,
) -> TestImage {
    let src = format!("oci:{}:{tag}", layout.display());
    let dest = format!("docker://{}/{repo}:{tag}", reg.addr);
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--all", "--dest-tls-verify=false"])
        .args(reg.skopeo_creds("--dest-creds"))
        .args([&src, &dest]));
    let oci_archive = dir.path().join("image-oci.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--all", &src])
        .arg(format!("oci-archive:{}", oci_archive.display())));
    let docker_archive = dir.path().join("image-docker.tar");
    run(Command::new("skopeo")
        .args(["--insecure-policy", "copy"])
        .arg(format!("oci:{}:{first}", layout.display()))
        .arg(format!("docker-archive:{}:{repo}:{tag}", docker_archive.display())));
    TestImage {
        reference: format!("{}/{repo}:{tag}", reg.addr),
        repo_tag: format!("{repo}:{tag}"),
        layout,
        oci_archive,
        docker_archive,
        dir,
    }
}

/// Build a test image with umoci from closures that fill rootfs dirs (one per layer), push
/// it with skopeo to the registry under `name` (`repo[:tag]`, tag defaults to `latest`),
/// and also export it as oci-archive and docker-archive files.
pub fn build_test_image(reg: &Registry, name: &str, layers: &[&dyn Fn(&Path)]) -> TestImage {
    let (repo, tag) = split_name(name);
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:{tag}", layout.display())));
    add_layers(dir.path(), &layout, &tag, layers);
    push_and_export(reg, dir, layout, &repo, &tag, &tag)
}

/// Push `image` again, converted to Docker v2 schema 2 media types (`skopeo --format v2s2`),
/// as `repo:tag`; returns the `docker://` reference (without the scheme).
pub fn push_docker_v2s2(reg: &Registry, image: &TestImage, repo_tag: &str) -> String {
    let tag = split_name(&image.repo_tag).1;
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .args(reg.skopeo_creds("--dest-creds"))
        .arg(format!("oci:{}:{tag}", image.layout.display()))
        .arg(format!("docker://{}/{repo_tag}", reg.addr)));
    format!("{}/{repo_tag}", reg.addr)
}

/// The layers of one image: closures that fill the rootfs, lowest first.
pub type Layers<'a> = &'a [&'a dyn Fn(&Path)];

/// Like [`build_test_image`] for several platforms (`"linux/arm64"`, ...): one image per
/// platform, joined by an OCI image index under `name`, pushed with `skopeo copy --all`.
pub fn build_multiarch_image(reg: &Registry, name: &str, platforms: &[(&str, Layers<'_>)]) -> TestImage {
    let (repo, tag) = split_name(name);
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = dir.path().join("layout");
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout));
    let mut manifests = Vec::new();
    for (i, (platform, layers)) in platforms.iter().enumerate() {
        let parts: Vec<&str> = platform.split('/').collect();
        let ptag = format!("platform-{i}");
        let image = format!("{}:{ptag}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &image]));
        run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--os",
            parts[0],
            "--architecture",
            parts[1],
        ]));
        add_layers(dir.path(), &layout, &ptag, layers);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("index JSON");
        let entry = index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == ptag.as_str())
            .expect("platform manifest in index.json")
            .clone();
        let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            p["variant"] = serde_json::json!(v);
        }
        manifests.push(serde_json::json!({
            "mediaType": entry["mediaType"],
            "digest": entry["digest"],
            "size": entry["size"],
            "platform": p,
        }));
    }
    let index_blob = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("index JSON");
    let hex: String = sha2::Sha256::digest(&index_blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(layout.join("blobs/sha256").join(&hex), &index_blob).expect("write index blob");
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json")).expect("index JSON");
    index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": index_blob.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("index JSON")).expect("write index.json");
    push_and_export(reg, dir, layout, &repo, &tag, "platform-0")
}
