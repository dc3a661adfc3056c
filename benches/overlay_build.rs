//! Per-node overlay builds (issue 9): system + runtime overlays for N nodes with the
//! `default` profile a new cluster gets (Warewulf 4.7's shipped one) plus `syncuser`,
//! through the same path a head uses (replicated catalog → boot view →
//! `BootOverlays`), on every core.
//!
//! - **Comparisons in the same run**: the cold build again with every per-node template
//!   rendered for each node (no outputs shared by input), then also with node parts
//!   deflated at level 6 (the builder as it was); sampled archives must be identical.
//!
//! - **Cold build** of every node (what `wwctl overlay build` does), against the anchor:
//!   Warewulf's published figure after its fix, about 13 s per 1,000 nodes (PR #1604),
//!   scaled to N (Warewulf cannot run here; it is the one anchor not measured in the run).
//! - **One node changed**: the rebuild after one node's tag changes (goal ≤ 50 ms).
//! - **Boot storm**: 1,000 nodes' first requests from 8 threads on a fresh builder: the
//!   renders counted against one render per template per node (no render twice).
//! - **Memory**: RSS before and after the cold build.
//! - **Image re-imported**: `syncuser` reads the image's `/etc/passwd` and `/etc/group`
//!   from its layers in the CAS (`IncludeFrom`); the layer passes are counted (the
//!   layers are read once per image, not per node), then the image's top layer changes
//!   and every node's system overlay is built again.
//!
//! `cargo bench --bench overlay_build` runs 10,000 nodes; without `--bench` (as `cargo
//! test --benches` runs it) 200 nodes check the harness.

#[path = "common/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wulfpack::boot::overlays::{build_all, BootOverlays};
use wulfpack::boot::view::BootView;
use wulfpack::cas::Cas;
use wulfpack::image::files::{ImageFiles, Limits};
use wulfpack::overlay::build::OverlayKind;
use wulfpack::overlay::render::{AccessPolicy, ClusterFiles, HostFs, ServerConf};
use wulfpack::state::{Command, ImageCommand, ImageEntry, LayerRef, OverlayCommand, Request, State};

/// A gzip'd layer: `files` filler files (a distribution base has 20,000–60,000) and the
/// given `etc/` files.
fn layer(files: usize, etc: &[(&str, String)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    for i in 0..files {
        add(
            &format!("usr/share/filler/{:03}/f{i}", i % 500),
            b"filler file of the base layer\n",
        );
    }
    for (name, text) in etc {
        add(&format!("etc/{name}"), text.as_bytes());
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn accounts(n: usize, tag: &str) -> Vec<(&'static str, String)> {
    let passwd: String = (0..n)
        .map(|i| format!("{tag}{i}:x:{}:{}::/home/{tag}{i}:/bin/bash\n", 1000 + i, 1000 + i))
        .collect();
    let group: String = (0..n).map(|i| format!("{tag}{i}:x:{}:\n", 1000 + i)).collect();
    vec![
        ("passwd", format!("root:x:0:0:root:/root:/bin/bash\n{passwd}")),
        ("group", format!("root:x:0:\n{group}")),
    ]
}

/// The `default` profile a new cluster gets (Warewulf 4.7's shipped one, from the one
/// source `wwctl genconfig defaults` prints), with the node image, and `syncuser` added
/// to its runtime overlays as `upgrade nodes --add-defaults` has it: it reads the image.
fn default_profile() -> wulfpack::model::NodeConf {
    let mut p = wulfpack::model::default_profile();
    p.image_name = Some("rocky9".into());
    p.runtime_overlay.push("syncuser".into());
    p
}

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn nodes_conf(n: usize) -> String {
    let mut y = "nodes:\n".to_string();
    for i in 0..n {
        y.push_str(&format!(
            "  n{i:05}:\n    profiles: [default]\n    network devices:\n      default:\n        device: eth0\n        hwaddr: 02:00:00:{:02x}:{:02x}:{:02x}\n        ipaddr: 10.{}.{}.{}\n        netmask: 255.0.0.0\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            10 + (i >> 16),
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    y
}

struct Rig {
    _dir: tempfile::TempDir,
    cas: Cas,
    state: State,
    index: u64,
    host: std::path::PathBuf,
}

impl Rig {
    fn new(n: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let cas = Cas::open(&dir.path().join("cas")).unwrap();
        // The head's files templates include: SSH host keys and root's public key.
        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("etc/warewulf/keys")).unwrap();
        std::fs::create_dir_all(host.join("root/.ssh")).unwrap();
        for t in ["rsa", "dsa", "ecdsa", "ed25519"] {
            let k = format!("ssh_host_{t}_key");
            std::fs::write(host.join("etc/warewulf/keys").join(&k), format!("PRIVATE {t}\n")).unwrap();
            std::fs::write(
                host.join("etc/warewulf/keys").join(format!("{k}.pub")),
                format!("PUBLIC {t}\n"),
            )
            .unwrap();
            std::fs::write(
                host.join(format!("root/.ssh/id_{t}.pub")),
                format!("ssh-{t} AAAA root@head\n"),
            )
            .unwrap();
        }
        let mut state = State::default();
        let set: BTreeMap<String, wulfpack::model::Digest> = wulfpack::overlay::store::distribution()
            .unwrap()
            .into_iter()
            .map(|(name, t)| (name, cas.put_bytes(&t.to_canonical()).unwrap()))
            .collect();
        // The node image `syncuser` reads: a base layer and a top layer with the accounts.
        let layer_ref = |bytes: Vec<u8>| LayerRef {
            digest: cas.put_bytes(&bytes).unwrap(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            size: bytes.len() as u64,
        };
        let image = ImageEntry {
            source: "bench".into(),
            platform: "linux/amd64".into(),
            layers: vec![
                layer_ref(layer(30_000, &[])),
                layer_ref(layer(0, &accounts(200, "user"))),
            ],
            config: None,
            rootfs_size: 0,
            files: 0,
            artifact: None,
            kernel: None,
            kernels: vec![],
            created: 1,
            updated: 1,
        };
        std::fs::write(
            host.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nadmin:x:900:900::/home/admin:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(host.join("etc/group"), "root:x:0:\nadmin:x:900:\n").unwrap();
        let mut rig = Rig {
            _dir: dir,
            cas,
            state: State::default(),
            index: 0,
            host,
        };
        rig.apply(
            &mut state,
            Command::Overlay(OverlayCommand::RegisterDistribution { set, now: 1 }),
        );
        rig.apply(
            &mut state,
            Command::Image(ImageCommand::Put {
                name: "rocky9".into(),
                entry: Box::new(image),
                expect: Some(0),
            }),
        );
        let mut conf = wulfpack::model::parse_nodes_conf(&nodes_conf(n)).unwrap();
        conf.nodeprofiles.insert("default".into(), default_profile());
        rig.apply(&mut state, Command::Import { conf });
        rig.state = state;
        rig
    }

    fn apply(&mut self, state: &mut State, cmd: Command) {
        self.index += 1;
        let r = state.apply(
            self.index,
            &Request {
                id: None,
                cmd,
                audit: None,
            },
        );
        assert!(r.0.is_ok(), "{r:?}");
    }

    fn view(&self) -> BootView {
        BootView::from_state(&self.state, self.index)
    }

    /// A head's overlays, as `wulfd` wires them; and its image file reader.
    fn overlays(&self) -> (BootOverlays, Arc<ImageFiles>) {
        let server = ServerConf::from_yaml("ipaddr: 10.0.0.1\nnetmask: 255.0.0.0\n").unwrap();
        let policy = AccessPolicy::default();
        let access = Arc::new(HostFs {
            host_root: self.host.clone(),
            images_dir: self.host.join("images"),
            policy: policy.clone(),
        });
        let images = Arc::new(ImageFiles::new(self.cas.clone(), Limits::default()));
        let access = Arc::new(ClusterFiles::new(access).with_images(images.clone()));
        let ov = BootOverlays::new(1, self.cas.clone(), server, access.clone(), policy).with_cluster_files(access);
        (ov, images)
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 10_000 } else { 200 };
    let storm = n.min(1_000);
    let rig = Rig::new(n);
    let view = rig.view();
    assert!(view.broken.is_empty(), "{:?}", view.broken);

    // Cold build of every node.
    let (ov, images) = rig.overlays();
    let rss0 = rss_mib();
    let t = Instant::now();
    let r = build_all(&ov, &view, &[]);
    let cold = t.elapsed().as_secs_f64();
    assert!(r.failed.is_empty(), "{:?}", &r.failed[..r.failed.len().min(3)]);
    let rss1 = rss_mib();
    let stats = ov.builder().stats();
    let image_reads = images.stats();

    // The same cold build with every per-node template rendered for each node (as
    // before outputs were shared by their inputs), and then also node parts deflated at
    // level 6 (as before): the comparisons, in the same run; and a check that sharing
    // outputs gives the same bytes.
    let (plain, _) = rig.overlays();
    plain.builder().set_group_outputs(false);
    let t = Instant::now();
    let rp = build_all(&plain, &view, &[]);
    let cold_plain = t.elapsed().as_secs_f64();
    assert!(rp.failed.is_empty(), "{:?}", &rp.failed[..rp.failed.len().min(3)]);
    let plain_renders = plain.builder().stats().renders;
    for node in view.nodes.values().step_by((n / 7).max(1)) {
        for kind in [OverlayKind::System, OverlayKind::Runtime] {
            assert_eq!(
                ov.build(&view, node, kind).unwrap().to_vec(),
                plain.build(&view, node, kind).unwrap().to_vec(),
                "{} {kind:?}: shared outputs changed the archive",
                node.name
            );
        }
    }
    drop(plain);
    let (old, _) = rig.overlays();
    old.builder().set_group_outputs(false);
    old.builder().set_node_level(6);
    let t = Instant::now();
    let ro = build_all(&old, &view, &[]);
    let cold_old = t.elapsed().as_secs_f64();
    assert!(ro.failed.is_empty());
    let (old_bytes, new_bytes) = (ro.bytes, r.bytes);
    drop(old);

    // One node changes: rebuild everything that depends on it.
    let mut rig = rig;
    let mut state = std::mem::take(&mut rig.state);
    let mut conf = state.nodes["n00001"].value.clone();
    conf.tags.insert("rack".into(), "r9".into());
    rig.apply(
        &mut state,
        Command::Put {
            kind: wulfpack::state::Kind::Node,
            items: vec![wulfpack::state::Put {
                name: "n00001".into(),
                conf,
                expect: None,
            }],
        },
    );
    rig.state = state;
    let view2 = rig.view();
    // What the changed node's next request costs: the next generation (one node's data
    // recomputed), the shared parts again (`hosts` reads every node), its own parts.
    let changed_node = view2.nodes["n00001"].clone();
    let t = Instant::now();
    for kind in [OverlayKind::System, OverlayKind::Runtime] {
        ov.build(&view2, &changed_node, kind).unwrap();
    }
    let one_node = t.elapsed().as_secs_f64();
    // And `overlay build` of every node after it: everything else is current.
    let t = Instant::now();
    let r2 = build_all(&ov, &view2, &[]);
    let one = t.elapsed().as_secs_f64() + one_node;

    // The same change again, `repeats` times (one sample is at the mercy of the load):
    // each sample is a new tag value of n00001 and its next system + runtime request,
    // split into the next generation (template data of the changed node, `AllNodes`,
    // the digests) and the builds (the shared parts, the node's own parts).
    // `OVERLAY_BENCH_CHANGES=N` makes it N (e.g. to profile the change with `perf`).
    let repeats = std::env::var("OVERLAY_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 9 } else { 2 });
    let mut samples = vec![one_node];
    let (mut gen_ms, mut build_ms) = (Vec::new(), Vec::new());
    let before_repeats = ov.builder().stats();
    for i in 0..repeats {
        let mut state = std::mem::take(&mut rig.state);
        let mut conf = state.nodes["n00001"].value.clone();
        conf.tags.insert("rack".into(), format!("r{}", 10 + i));
        rig.apply(
            &mut state,
            Command::Put {
                kind: wulfpack::state::Kind::Node,
                items: vec![wulfpack::state::Put {
                    name: "n00001".into(),
                    conf,
                    expect: None,
                }],
            },
        );
        rig.state = state;
        let v = rig.view();
        let node = v.nodes["n00001"].clone();
        let t = Instant::now();
        ov.generation(&v);
        let g = t.elapsed().as_secs_f64();
        for kind in [OverlayKind::System, OverlayKind::Runtime] {
            ov.build(&v, &node, kind).unwrap();
        }
        let all = t.elapsed().as_secs_f64();
        samples.push(all);
        gen_ms.push(g * 1000.0);
        build_ms.push((all - g) * 1000.0);
    }
    let per_change = {
        let a = ov.builder().stats();
        let k = repeats as u64;
        (
            (a.renders - before_repeats.renders) / k,
            (a.shared - before_repeats.shared) / k,
            (a.runs - before_repeats.runs) / k,
        )
    };
    let ms: Vec<f64> = samples.iter().map(|s| s * 1000.0).collect();
    let (one_med, one_min, one_max) = report::stats(&ms);
    let (gen_med, _, _) = report::stats(&gen_ms);
    let (build_med, _, _) = report::stats(&build_ms);

    // Boot storm on a fresh builder: the first request of each of `storm` nodes.
    let (fresh, _) = rig.overlays();
    let names: Vec<_> = view2.nodes.values().take(storm).cloned().collect();
    let t = Instant::now();
    std::thread::scope(|s| {
        for part in names.chunks(storm.div_ceil(8)) {
            let (fresh, view2) = (&fresh, &view2);
            s.spawn(move || {
                for node in part {
                    for kind in [OverlayKind::System, OverlayKind::Runtime] {
                        fresh.build(view2, node, kind).unwrap();
                    }
                }
            });
        }
    });
    let storm_secs = t.elapsed().as_secs_f64();
    let st = fresh.builder().stats();

    // The image is re-imported with one more account: every node's runtime overlay
    // (`syncuser` reads the image) is built again; the system overlays are current.
    let mut state = std::mem::take(&mut rig.state);
    let mut entry = state.images["rocky9"].value.clone();
    let top = layer(0, &accounts(201, "user"));
    entry.layers[1] = LayerRef {
        digest: rig.cas.put_bytes(&top).unwrap(),
        media_type: entry.layers[1].media_type.clone(),
        size: top.len() as u64,
    };
    let version = state.images["rocky9"].version;
    rig.apply(
        &mut state,
        Command::Image(ImageCommand::Put {
            name: "rocky9".into(),
            entry: Box::new(entry),
            expect: Some(version),
        }),
    );
    rig.state = state;
    let view3 = rig.view();
    let before = (ov.builder().stats(), images.stats());
    let t = Instant::now();
    let r3 = build_all(&ov, &view3, &[]);
    let reimport = t.elapsed().as_secs_f64();
    assert!(r3.failed.is_empty(), "{:?}", &r3.failed[..r3.failed.len().min(3)]);
    let after = images.stats();
    let passes = after.layer_passes - before.1.layer_passes;
    assert_eq!(r3.built, n as u64, "every node's runtime overlay reads the image");
    assert_eq!(r3.cached, n as u64, "no system overlay reads it");
    // The new top layer indexed, passwd and group read from it: never a pass per node.
    assert!(passes <= 4, "{passes} layer passes for one changed image");

    let anchor = 13.0 * n as f64 / 1000.0;
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_default();
    report::record(
        &report::Figure {
            bench: "overlay_build",
            measure: &format!("system + runtime overlays of {n} nodes, cold"),
            unit: "s",
            better: report::Better::Lower,
            wulfpack: cold,
            spread: None,
            anchor: Some(("Warewulf, published (13 s / 1,000 nodes, PR #1604)", anchor)),
            goal: "",
        },
        full,
    );
    report::record(
        &report::Figure {
            bench: "overlay_build",
            measure: "one node's tag changed: its next system + runtime request",
            unit: "ms",
            better: report::Better::Lower,
            wulfpack: one_med,
            spread: Some((one_min, one_max)),
            anchor: None,
            goal: "≤ 50 ms",
        },
        full,
    );
    println!("| measure | wulfpack | anchor | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| system + runtime overlays, {n} nodes, cold (`overlay build`) | {cold:.2} s ({} archives rendered, {} template renders, {} outputs reused, {:.1} MB) | Warewulf ≈ {anchor:.0} s (13 s / 1,000 nodes, PR #1604, published) | {:.0}× faster |",
        r.built,
        stats.renders,
        stats.reused,
        r.bytes as f64 / 1e6,
        anchor / cold
    );
    println!(
        "| the same, every per-node template rendered for each node (outputs not shared by input) | {cold_plain:.2} s ({plain_renders} template renders) | this run's cold build | {:.2}× the time |",
        cold_plain / cold
    );
    println!(
        "| … and node parts deflated at level 6 (as before), not 2 | {cold_old:.2} s ({:.1} MB of archives, against {:.1} MB) | this run's cold build | {:.2}× the time |",
        old_bytes as f64 / 1e6,
        new_bytes as f64 / 1e6,
        cold_old / cold
    );
    {
        println!(
            "| one node's tag changed: that node's next system + runtime request ({} changes) | median {one_med:.1} ms (min {one_min:.1}, max {one_max:.1}; first {:.1}); of which the next generation {gen_med:.1} ms, the builds {build_med:.1} ms; per change {} renders, {} shared parts, {} shared outputs deflated | goal ≤ 50 ms | — |",
            ms.len(),
            one_node * 1000.0,
            per_change.0,
            per_change.1,
            per_change.2
        );
        println!(
            "| one node's tag changed: `overlay build` of every node | {:.1} ms ({} more rendered, {} current) | — | — |",
            one * 1000.0,
            r2.built,
            r2.cached
        );
    }
    println!(
        "| boot storm: first requests of {storm} nodes, 8 threads | {storm_secs:.2} s; {} node parts rendered, {} shared parts, {} template renders | one render per template and node | {} |",
        st.builds,
        st.shared,
        st.renders,
        if st.builds == 2 * storm as u64 { "no render twice" } else { "RENDERED TWICE" }
    );
    println!("| RSS of the build | {rss0:.0} → {rss1:.0} MiB | — | — |");
    println!(
        "| cold build: image files read for `syncuser` (`IncludeFrom`, 2 layers, 30,000 paths) | {} layer passes, {} reads from the cache | one pass per layer and file, not per node | — |",
        image_reads.layer_passes, image_reads.hits
    );
    println!(
        "| image re-imported (top layer changed): `overlay build` of every node | {reimport:.2} s ({} rendered, {} current; {passes} layer passes) | — | — |",
        r3.built, r3.cached
    );
    println!(
        "\nmachine: {machine}, {} cores",
        std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1)
    );
    assert_eq!(
        st.builds,
        2 * storm as u64,
        "a node part was rendered twice in the storm"
    );
}
