//! The `wwctl` verbs of issue 8 part 5 and the exit codes of part 6: `ssh` against a
//! real `sshd` on 127.0.0.1, `clean`, `configure dhcp|tftp|warewulfd`, `upgrade
//! nodes|config` on Warewulf files of each version shape, `genconfig`; the `wwctl`
//! binary's exit codes (0 ok, 1 error, 2 usage) over a sample of verbs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::harness::{golden, ok, settings, ww, Cluster};

const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

/// Run the `wwctl` binary: (exit code, stdout, stderr). No config file or environment
/// heads leak in.
async fn wwctl(heads: &str, args: &[&str]) -> (i32, String, String) {
    let o = tokio::process::Command::new(WWCTL)
        .arg("--heads")
        .arg(heads)
        .args(args)
        .env_remove("WW_HEADS")
        .env("WWCTL_CONFIG", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run wwctl");
    (
        o.status.code().expect("wwctl exited (not killed)"),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn heads(c: &Cluster) -> String {
    (0..c.cfgs.len()).map(|i| c.addr(i)).collect::<Vec<_>>().join(",")
}

/// In-process `wwctl` without a cluster (`upgrade`, `genconfig` ask no head).
async fn local(args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["wwctl", "--heads", "127.0.0.1:1"];
    argv.extend_from_slice(args);
    let cli = wulfpack::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    wulfpack::cli::run(cli, &mut out).await.map_err(|e| format!("{e:#}"))?;
    Ok(String::from_utf8(out).unwrap())
}

/// Exit codes: 0 ok, 1 error, 2 usage — the same for every verb (docs/OPERATIONS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exit_codes_are_the_same_for_every_verb() {
    let c = Cluster::start(1, settings()).await;
    ok(&c, &["node", "add", "n1", "--ipaddr", "10.0.0.1"]).await;
    let h = heads(&c);
    let cases: &[(&[&str], i32)] = &[
        // ok
        (&["node", "list"], 0),
        (&["profile", "list"], 0),
        (&["image", "list"], 0),
        (&["overlay", "list"], 0),
        (&["rack", "list"], 0),
        (&["cluster", "status"], 0),
        (&["version"], 0),
        (&["-o", "json", "node", "list"], 0),
        (&["clean", "--dry-run"], 0),
        (&["configure", "dhcp"], 0),
        (&["ssh", "--dryrun", "n1", "--", "uptime"], 0),
        (&["genconfig", "completions", "bash"], 0),
        (&["node", "list", "--help"], 0),
        // Warewulf's aliases and the flags it accepts
        (&["nodes", "ls"], 0),
        (&["vnfs", "ls"], 0),
        (&["vers", "--full"], 0),
        (&["completion", "bash"], 0),
        (&["cnf", "defaults"], 0),
        (&["image", "build", "-a"], 0),
        (&["node", "modify", "-f", "-y", "n1", "--comment", "x"], 0),
        // `unset --force` skips a missing node; without it, or when none exists, an error
        (&["node", "unset", "-f", "-y", "--comment", "n[1,9]"], 0),
        (&["node", "unset", "-y", "--comment", "n[1,9]"], 1),
        (&["node", "unset", "-f", "-y", "--comment", "n9"], 1),
        // error: the command was well formed, what it asked for failed
        (&["node", "set", "nosuch", "--comment", "x", "-y"], 1),
        (&["node", "list", "n[1-"], 1),
        (&["image", "kernels", "nosuch"], 1),
        (&["ssh", "nosuch", "--", "true"], 1),
        (
            &[
                "upgrade",
                "nodes",
                "-i",
                "/nonexistent/nodes.conf",
                "--output-path",
                "-",
            ],
            1,
        ),
        // usage: clap refused the command line
        (&["node", "frobnicate"], 2),
        (&["--no-such-flag", "node", "list"], 2),
        (&[], 2),
        (&["configure"], 2),
        (&["configure", "--all", "dhcp"], 2),
        (&["clean", "--min-age", "soon"], 2),
        (&["ssh", "n1"], 2),
        (&["ssh", "--fanout", "0", "n1", "--", "true"], 2),
        (&["genconfig", "completions", "tcsh"], 2),
        (&["upgrade", "nodes", "-i", "x"], 2),
    ];
    let mut wrong = Vec::new();
    for (args, want) in cases {
        let (code, _, err) = wwctl(&h, args).await;
        if code != *want {
            wrong.push(format!("wwctl {args:?}: exit {code}, want {want}; stderr: {err}"));
        }
    }
    // Aliases and accepted flags of the checks: the same result as the plain form (the
    // checks themselves depend on what this machine has installed).
    for (plain, alias) in [
        (&["configure", "tftp"][..], &["configure", "tftp", "--show"][..]),
        (&["configure", "tls"][..], &["configure", "cert"][..]),
    ] {
        let (want, _, _) = wwctl(&h, plain).await;
        let (code, _, err) = wwctl(&h, alias).await;
        if code != want {
            wrong.push(format!(
                "wwctl {alias:?}: exit {code}, want {want} as {plain:?}; stderr: {err}"
            ));
        }
    }
    // A head that is not there is an error too (1), not a usage error.
    let (code, _, err) = wwctl("127.0.0.1:1", &["--timeout", "2", "node", "list"]).await;
    if code != 1 {
        wrong.push(format!("unreachable head: exit {code}, want 1; stderr: {err}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    c.shutdown().await;
}

/// `-o json` of the new verbs has the documented fields (docs/OPERATIONS.md).
fn fields(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
    k.sort();
    k
}

/// `wwctl clean`: an unreferenced blob on one head is listed by `--dry-run` (and
/// stays), then removed; every other blob of every head stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clean_removes_only_unreferenced_blobs() {
    let c = Cluster::start(2, settings()).await;
    let orphan = c.ctx(1).cas.put_bytes(b"a blob nothing references").unwrap();
    let before: Vec<Vec<wulfpack::cas::Digest>> = (0..2)
        .map(|i| c.ctx(i).cas.list().unwrap().into_iter().map(|b| b.digest).collect())
        .collect();

    let dry = ok(&c, &["clean", "--dry-run", "--min-age", "0"]).await;
    assert!(c.ctx(1).cas.contains(&orphan), "a dry run removes nothing");
    // How many blobs are kept depends on what the overlays registered so far.
    let kept = regex::Regex::new(r"kept \d+").unwrap();
    golden("clean_dry_run.txt", &kept.replace_all(&dry, "kept N"));

    let json = ok(&c, &["-o", "json", "clean", "--dry-run", "--min-age", "0"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        fields(&rows[1]),
        ["blobs", "bytes", "dry_run", "head", "kept", "temp_removed"]
    );
    assert_eq!(fields(&rows[1]["blobs"][0]), ["digest", "size"]);
    assert_eq!(rows[1]["blobs"][0]["digest"], orphan.to_string());
    assert_eq!(rows[1]["bytes"], 25);

    // The default minimum age keeps a blob just written (an import in progress).
    let young = ok(&c, &["clean"]).await;
    assert!(young.contains("head 2: removed 0 unreferenced blob(s)"), "{young}");
    assert!(c.ctx(1).cas.contains(&orphan));

    let done = ok(&c, &["clean", "--min-age", "0"]).await;
    assert!(done.contains(&format!("2     {orphan}  25")), "{done}");
    assert!(
        done.contains("head 2: removed 1 unreferenced blob(s), 25 bytes"),
        "{done}"
    );
    assert!(!c.ctx(1).cas.contains(&orphan));
    for (i, had) in before.iter().enumerate() {
        for d in had.iter().filter(|d| **d != orphan) {
            assert!(c.ctx(i).cas.contains(d), "head {} lost referenced blob {d}", i + 1);
        }
    }
    c.shutdown().await;
}

/// `configure dhcp|tftp|warewulfd`: the head's own boot services, checked and reported;
/// a missing iPXE binary fails `configure tftp` until it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configure_checks_the_boot_services() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("undionly.kpxe"), b"undi!").unwrap();
    std::fs::write(root.path().join("snponly.efi"), b"snponly").unwrap();
    let r = root.path().to_path_buf();
    let c = Cluster::start_with(1, settings(), move |cfg| {
        cfg.boot.tftp.enabled = true;
        cfg.boot.tftp.listen = wulfpack::boot::tftp::Listen::One("127.0.0.1:0".into());
        cfg.boot.tftp.root = r.clone();
    })
    .await;
    let norm = |s: &str| {
        let s = s.replace(root.path().to_str().unwrap(), "<root>");
        regex::Regex::new(r"127\.0\.0\.1:\d+")
            .unwrap()
            .replace_all(&s, "127.0.0.1:PORT")
            .into_owned()
    };

    golden("configure_dhcp.txt", &ok(&c, &["configure", "dhcp"]).await);
    // The arm64 binary of the default table is missing: the command fails, saying which.
    let e = ww(&c, &["configure", "tftp"]).await.unwrap_err();
    assert!(e.contains("tftp ipxe 0b arm64-efi/snponly.efi"), "{e}");
    let (code, out, _) = wwctl(&heads(&c), &["configure", "tftp"]).await;
    assert_eq!(code, 1);
    golden("configure_tftp.txt", &norm(&out));
    std::fs::create_dir(root.path().join("arm64-efi")).unwrap();
    std::fs::write(root.path().join("arm64-efi/snponly.efi"), b"arm").unwrap();
    let fixed = ok(&c, &["configure", "tftp"]).await;
    assert!(!fixed.contains("FAIL"), "{fixed}");

    golden(
        "configure_warewulfd.txt",
        &norm(&ok(&c, &["configure", "warewulfd"]).await),
    );
    let json = ok(&c, &["-o", "json", "configure", "warewulfd"]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(fields(&rows[0]), ["detail", "head", "item", "service", "state"]);
    c.shutdown().await;
}

/// `upgrade nodes` on Warewulf files of each version shape, and `upgrade config`:
/// the written files and the reports are golden; what is written loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_warewulf_files_of_each_version() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/upgrade");
    let dir = tempfile::tempdir().unwrap();
    for v in ["4.2", "4.4", "4.7"] {
        let input = fixtures.join(format!("ww{v}-nodes.conf"));
        let output = dir.path().join(format!("{v}.conf"));
        let report = local(&[
            "upgrade",
            "nodes",
            "-i",
            input.to_str().unwrap(),
            "--output-path",
            output.to_str().unwrap(),
        ])
        .await
        .unwrap();
        let written = std::fs::read_to_string(&output).unwrap();
        wulfpack::model::parse_nodes_conf(&written).expect("the upgraded nodes.conf loads");
        let report = report.replace(dir.path().to_str().unwrap(), "<out>");
        let report = report.replace(fixtures.to_str().unwrap(), "<fixtures>");
        golden(&format!("upgrade/ww{v}-nodes.upgraded"), &written);
        golden(&format!("upgrade/ww{v}-nodes.report"), &report);
    }
    // An existing output is kept as <file>-old.
    let out = dir.path().join("4.7.conf");
    let previous = std::fs::read_to_string(&out).unwrap();
    let input = fixtures.join("ww4.2-nodes.conf");
    local(&[
        "upgrade",
        "nodes",
        "-i",
        input.to_str().unwrap(),
        "--output-path",
        out.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("4.7.conf-old")).unwrap(),
        previous
    );

    // `--output-path -`: the file on stdout, the notes on stderr.
    let input = fixtures.join("ww4.4-nodes.conf");
    let (code, stdout, stderr) = wwctl(
        "127.0.0.1:1",
        &["upgrade", "nodes", "-i", input.to_str().unwrap(), "--output-path", "-"],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        wulfpack::model::parse_nodes_conf(&stdout).unwrap(),
        wulfpack::model::parse_nodes_conf(&std::fs::read_to_string(fixtures.join("ww4.4-nodes.upgraded")).unwrap())
            .unwrap()
    );
    assert!(stderr.contains("dropped   (top): `WW_INTERNAL`"), "{stderr}");

    let input = fixtures.join("ww4.5-warewulf.conf");
    let output = dir.path().join("wulfd.yaml");
    let report = local(&[
        "upgrade",
        "config",
        "-i",
        input.to_str().unwrap(),
        "--output-path",
        output.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let written = std::fs::read_to_string(&output).unwrap();
    let cfg: wulfpack::daemon::HeadConfig = serde_yaml_ng::from_str(&written).expect("a wulfd.yaml");
    wulfpack::daemon::Settings::try_from(cfg).expect("the written wulfd.yaml validates");
    let norm = |s: &str| {
        s.replace(dir.path().to_str().unwrap(), "<out>")
            .replace(fixtures.to_str().unwrap(), "<fixtures>")
    };
    golden("upgrade/ww4.5-warewulf.wulfd.yaml", &norm(&written));
    golden("upgrade/ww4.5-warewulf.report", &norm(&report));
}

/// `genconfig`: a man page and a reference page per command; completion scripts
/// that their shells parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genconfig_writes_man_pages_reference_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let said = local(&["genconfig", "man", man.to_str().unwrap()]).await.unwrap();
    assert!(said.starts_with("Wrote "), "{said}");
    for page in ["wwctl.1", "wwctl-node-add.1", "wwctl-ssh.1", "wwctl-upgrade-nodes.1"] {
        let text = std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    assert!(
        std::fs::read_to_string(man.join("wwctl-ssh.1"))
            .unwrap()
            .contains("fanout"),
        "the ssh page documents --fanout"
    );
    let refdir = dir.path().join("reference");
    local(&["genconfig", "reference", refdir.to_str().unwrap()])
        .await
        .unwrap();
    let node_add = std::fs::read_to_string(refdir.join("wwctl_node_add.md")).unwrap();
    assert!(node_add.contains("Usage: wwctl node add"), "{node_add}");
    let top = std::fs::read_to_string(refdir.join("wwctl.md")).unwrap();
    assert!(top.contains("[wwctl genconfig](wwctl_genconfig.md)"), "{top}");

    for (shell, check) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")] {
        let script = local(&["genconfig", "completions", shell]).await.unwrap();
        assert!(script.contains("genconfig") && script.contains("upgrade"), "{shell}");
        let path = dir.path().join(format!("wwctl.{shell}"));
        std::fs::write(&path, &script).unwrap();
        // The shell itself checks the syntax when it is installed.
        let flag = if shell == "fish" { "--no-execute" } else { "-n" };
        match std::process::Command::new(check).arg(flag).arg(&path).output() {
            Ok(o) => assert!(o.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&o.stderr)),
            Err(_) => println!("SKIP {shell} syntax check: {check} is not installed"),
        }
    }
}

/// Warewulf's `image import -b` (build) before the source, `--build=false`, and the
/// hidden `--arch`/`--passwd` spellings parse to what they mean.
#[test]
fn image_import_takes_warewulfs_flags() {
    use wulfpack::cli::image::ImageCmd;
    use wulfpack::cli::{Cli, Top};
    let parse = |args: &[&str]| {
        let mut argv = vec!["wwctl"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map(|c| c.cmd) {
            Ok(Top::Image(ImageCmd::Import {
                source,
                name,
                build,
                platform,
                password,
                ..
            })) => (source, name, build, platform, password),
            other => panic!("{args:?}: {other:?}"),
        }
    };
    let (source, name, build, ..) = parse(&["image", "import", "-b", "docker://r/x:1", "x"]);
    assert_eq!(
        (source.as_str(), name.as_deref(), build),
        ("docker://r/x:1", Some("x"), true)
    );
    assert!(!parse(&["image", "pull", "--build=false", "dir"]).2);
    let (.., platform, password) = parse(&["image", "import", "--arch", "arm64", "--passwd", "pw", "dir"]);
    assert_eq!((platform.as_deref(), password.as_deref()), (Some("arm64"), Some("pw")));
}

/// `image exec IMAGE COMMAND...` as Warewulf takes it, with or without `--`; exec's own
/// options before the command, everything from the command on is the command's.
#[test]
fn image_exec_takes_the_command_with_or_without_dashes() {
    use wulfpack::cli::image::ImageCmd;
    use wulfpack::cli::{Cli, Top};
    let parse = |args: &[&str]| {
        let mut argv = vec!["wwctl", "image", "exec"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map(|c| c.cmd) {
            Ok(Top::Image(ImageCmd::Exec { name, cmd, opts })) => (name, cmd, opts),
            Ok(other) => panic!("{args:?}: {other:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    };
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(parse(&["r9", "/bin/ls", "-l"]).1, v(&["/bin/ls", "-l"]));
    assert_eq!(parse(&["r9", "--", "/bin/ls", "-l"]).1, v(&["/bin/ls", "-l"]));
    let (name, cmd, opts) = parse(&["r9", "--build=false", "--node", "n1", "--", "/bin/sh", "-c", "x"]);
    assert_eq!(
        (name.as_str(), cmd, opts.build, opts.node.as_deref()),
        ("r9", v(&["/bin/sh", "-c", "x"]), false, Some("n1"))
    );
    let (_, cmd, opts) = parse(&["--bind", "/tmp:/mnt", "r9", "/bin/echo", "--build", "-n"]);
    assert_eq!(
        (cmd, opts.binds, opts.build),
        (v(&["/bin/echo", "--build", "-n"]), v(&["/tmp:/mnt"]), true)
    );
    assert!(
        Cli::try_parse_from(["wwctl", "image", "exec", "r9"]).is_err(),
        "a command is required"
    );
}

/// `genconfig defaults`: the `default` profile a new cluster starts with (Warewulf 4.7's
/// shipped one) as a nodes.conf that `wwctl profile import` reads; `upgrade nodes
/// --add-defaults` gives a file without one the same values, with the overlay lists of
/// Warewulf's upgrade (the split `wwinit` and `generic`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genconfig_defaults_prints_the_default_profile() {
    let text = local(&["genconfig", "defaults"]).await.unwrap();
    golden("genconfig_defaults.yaml", &text);
    assert_eq!(
        local(&["genconfig", "dfaults"]).await.unwrap(),
        text,
        "Warewulf 4.5's alias"
    );
    let conf = match wulfpack::model::parse_import(&text, "genconfig defaults").unwrap() {
        wulfpack::model::ImportDoc::NodesConf(c) => c,
        other => panic!("not a nodes.conf document: {other:?}"),
    };
    assert!(conf.nodes.is_empty());
    let p = &conf.nodeprofiles["default"];
    assert_eq!(*p, wulfpack::model::default_profile());
    assert_eq!(p.init.as_deref(), Some("/sbin/init"));

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nodes.conf");
    std::fs::write(&input, "nodeprofiles: {}\nnodes: {}\n").unwrap();
    let output = dir.path().join("upgraded.conf");
    local(&[
        "upgrade",
        "nodes",
        "--add-defaults",
        "-i",
        input.to_str().unwrap(),
        "--output-path",
        output.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let upgraded = wulfpack::model::parse_nodes_conf(&std::fs::read_to_string(&output).unwrap()).unwrap();
    let mut expect = p.clone();
    expect.comment = None;
    expect.system_overlay.retain(|o| o != "hosts");
    expect.runtime_overlay.push("syncuser".into());
    assert_eq!(upgraded.nodeprofiles["default"], expect);
}

/// A throwaway `sshd` on 127.0.0.1 that lets root in with a test key.
struct Sshd {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start() -> Result<Sshd, String> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() {
            return Err("/usr/sbin/sshd is not installed (apt-get install openssh-server)".into());
        }
        if unsafe_euid() != 0 {
            return Err("sshd needs root to switch to the logged-in user".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let keygen = |name: &str| {
            let s = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if s.success() {
                Ok(())
            } else {
                Err(format!("ssh-keygen failed: {s}"))
            }
        };
        keygen("host")?;
        keygen("id")?;
        std::fs::copy(dir.path().join("id.pub"), dir.path().join("authorized_keys")).unwrap();
        // Privilege separation directory Debian's sshd insists on.
        std::fs::create_dir_all("/run/sshd").map_err(|e| format!("/run/sshd: {e}"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nListenAddress 127.0.0.2\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.path().join("sshd_config"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting sshd: {e}"))?;
        let mut s = Sshd { child, dir, port };
        // Bounded: 100 tries, 5 s.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("sshd exited at start: {st}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = s.child.kill();
        Err("sshd did not listen within 5 s".into())
    }

    /// `-O` options for `wwctl ssh` to reach it with the test key.
    fn options(&self) -> Vec<String> {
        let d = self.dir.path().display();
        [
            format!("Port={}", self.port),
            format!("IdentityFile={d}/id"),
            "IdentitiesOnly=yes".into(),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-O".to_string(), o])
        .collect()
    }
}

fn unsafe_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// `wwctl ssh` against a real sshd: output prefixed per node, exit status per node, a
/// refused node and a node without an address fail alone, a node past its deadline
/// is killed in time; the command fails when any node failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssh_runs_on_every_node_and_reports_each() {
    let sshd = match Sshd::start() {
        Ok(s) => s,
        Err(why) => {
            println!("SKIP ssh_runs_on_every_node_and_reports_each: {why}");
            return;
        }
    };
    let c = Cluster::start(1, settings()).await;
    // 127.0.0.1 and .2 (counted up); sshd listens on both.
    ok(&c, &["node", "add", "n[1-2]", "--ipaddr", "127.0.0.1"]).await;
    // Nothing listens on 127.0.0.3 at that port: refused.
    ok(&c, &["node", "add", "n3", "--ipaddr", "127.0.0.3"]).await;
    ok(&c, &["node", "add", "n4"]).await;
    let h = heads(&c);
    let opts = sshd.options();
    let with = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["ssh".into()];
        v.extend(opts.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    golden(
        "ssh_dryrun.txt",
        &ok(&c, &["ssh", "--dryrun", "n[1-4]", "--", "uname", "-s"]).await,
    );

    let args = with(&["--fanout", "1", "n[1-4]", "--", "echo", "hello", "from", "$((40+2))"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = wwctl(&h, &args).await;
    assert_eq!(code, 1, "a node failed: exit 1; stderr: {err}");
    golden("ssh_n1-4.txt", &out);
    assert!(
        err.contains("2 of 4 nodes failed: n3 (exit status 255), n4 (no primary network device"),
        "{err}"
    );

    // Fan-out: all at once, the same lines (in completion order).
    let args = with(&["--fanout", "4", "n[1-2]", "--", "echo", "hi"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = wwctl(&h, &args).await;
    assert_eq!(code, 0, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["n1: hi", "n2: hi"]);

    // A remote failure is that node's exit status.
    let args = with(&["n1", "--", "exit", "7"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, _) = wwctl(&h, &args).await;
    assert_eq!((code, out.as_str()), (1, "n1: [exit status 7]\n"));

    // Each node has its own deadline.
    let args = with(&["--node-timeout", "1", "n[1-2]", "--", "sleep", "30"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let (code, out, _) = wwctl(&h, &args).await;
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    assert_eq!(code, 1);
    assert!(out.contains("n1: [failed: timed out after 1 s"), "{out}");
    assert!(out.contains("n2: [failed: timed out after 1 s"), "{out}");
    c.shutdown().await;
}
