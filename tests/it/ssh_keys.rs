//! The cluster's SSH keys: `wwctl configure ssh` gives the cluster one set of node host
//! keys (from ssh-keygen, or a Warewulf server's /etc/warewulf/keys), every head renders
//! the same keys into `ssh.host_keys`, and every head's root key lands in every node's
//! `authorized_keys` (`ssh.authorized_keys`), whichever head builds the overlay.

use std::path::Path;

use crate::harness::{eventually, ok, settings, Cluster};

/// `wwctl` against one head only (renders happen on the head asked).
async fn ww_at(head: &str, args: &[&str]) -> String {
    use clap::Parser;
    let mut argv = vec!["wwctl", "--heads", head];
    argv.extend_from_slice(args);
    let cli = wulfpack::cli::Cli::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    wulfpack::cli::run(cli, &mut out)
        .await
        .unwrap_or_else(|e| panic!("wwctl {args:?} at {head}: {e:#}"));
    String::from_utf8(out).unwrap()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_set_of_host_keys_and_every_heads_root_key() {
    if std::process::Command::new("ssh-keygen").arg("-?").output().is_err() {
        eprintln!("SKIP one_set_of_host_keys_and_every_heads_root_key: ssh-keygen is missing (apt-get install openssh-client)");
        return;
    }
    // Each head its own host root with its own root key (as on separate machines).
    let roots = tempfile::tempdir().unwrap();
    for h in 1..=3 {
        write(
            &roots.path().join(format!("h{h}/root/.ssh/id_ed25519.pub")),
            &format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHead{h} root@head{h}\n"),
        );
    }
    let base = roots.path().to_path_buf();
    let c = Cluster::start_with(3, settings(), move |cfg| {
        cfg.boot.overlays.host_root = base.join(format!("h{}", cfg.id));
    })
    .await;
    ok(&c, &["node", "add", "n1", "--ipaddr", "10.5.0.11"]).await;

    // The first `configure ssh` (as if on head 1, whose disk has Warewulf's keys for
    // ed25519) gives the cluster those, and new ones for the other type.
    let h1 = roots.path().join("h1");
    write(
        &h1.join("etc/warewulf/keys/ssh_host_ed25519_key"),
        "PRIVATE-ED25519-OF-HEAD1\n",
    );
    write(
        &h1.join("etc/warewulf/keys/ssh_host_ed25519_key.pub"),
        "ssh-ed25519 AAAApub head1\n",
    );
    let out = ok(
        &c,
        &[
            "configure",
            "ssh",
            "--key-types",
            "ed25519,ecdsa",
            "--root",
            h1.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.contains("ed25519: from this head's /etc/warewulf/keys"), "{out}");
    assert!(out.contains("ecdsa: from ssh-keygen"), "{out}");
    assert!(out.contains("ssh_host_ecdsa_key"), "{out}");
    // A second run (another head, fresh keys) keeps the cluster's.
    let h2 = roots.path().join("h2");
    let again = ok(
        &c,
        &[
            "configure",
            "ssh",
            "--key-types",
            "ed25519",
            "--root",
            h2.to_str().unwrap(),
        ],
    )
    .await;
    assert!(again.contains("already has"), "{again}");
    let pubkey = std::fs::read_to_string(h2.join("root/.ssh/id_ed25519.pub")).unwrap();
    assert!(
        pubkey.contains("root@head2"),
        "root's existing key is kept, not replaced: {pubkey}"
    );
    assert!(again.contains("exists"), "{again}");
    // A head without a root key gets one.
    let h3 = roots.path().join("h3-fresh");
    let fresh = ok(
        &c,
        &[
            "configure",
            "ssh",
            "--key-types",
            "ed25519",
            "--root",
            h3.to_str().unwrap(),
        ],
    )
    .await;
    assert!(fresh.contains("Made root's key"), "{fresh}");
    assert!(h3.join("root/.ssh/id_ed25519").exists() && h3.join("root/.ssh/id_ed25519.pub").exists());

    // Every head renders the same host keys for the node (once it applied the write).
    let mut seen = Vec::new();
    for i in 0..3 {
        let head = c.addr(i);
        let show = |file: &'static str| {
            let head = head.clone();
            async move { ww_at(&head, &["overlay", "show", "--render", "n1", "ssh.host_keys", file]).await }
        };
        // ecdsa exists only in the cluster (made by ssh-keygen above).
        eventually(10, "the head rendering the cluster's keys", || async {
            show("/etc/ssh/ssh_host_ecdsa_key.ww").await.contains("PRIVATE KEY")
        })
        .await;
        let ed = show("/etc/ssh/ssh_host_ed25519_key.ww").await;
        assert!(ed.contains("PRIVATE-ED25519-OF-HEAD1"), "head {}: {ed}", i + 1);
        let ecdsa = show("/etc/ssh/ssh_host_ecdsa_key.ww").await;
        seen.push(ecdsa);
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every head renders the same ecdsa key"
    );

    // Every head's root key is authorized on the node, from any head.
    eventually(20, "every head's root key registered", || async {
        let shown = ok(
            &c,
            &[
                "overlay",
                "show",
                "--render",
                "n1",
                "ssh.authorized_keys",
                "/root/.ssh/authorized_keys.ww",
            ],
        )
        .await;
        (1..=3).all(|h| shown.contains(&format!("root@head{h}")))
    })
    .await;
    c.shutdown().await;
}
