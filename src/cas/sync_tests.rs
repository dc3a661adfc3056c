use std::collections::BTreeSet;

use super::*;
use crate::state::{Artifact, ImageEntry, KernelRef, LayerRef, OverlayEntry, Versioned};

fn store() -> (tempfile::TempDir, Cas) {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::open(&dir.path().join("cas")).unwrap();
    (dir, cas)
}

#[test]
fn backoff_doubles_from_one_second_and_is_capped_at_five_minutes() {
    for seed in 0..=255u8 {
        let d = Digest([seed; 32]);
        for failures in 1..=200u32 {
            let b = backoff(failures, &d);
            let base = BACKOFF_FIRST
                .saturating_mul(1 << failures.saturating_sub(1).min(16))
                .min(BACKOFF_MAX);
            assert!(b >= base.mul_f64(0.8) && b <= base.mul_f64(1.2), "{failures}: {b:?}");
            assert!(b <= BACKOFF_MAX.mul_f64(1.2), "bounded: {failures}: {b:?}");
        }
        assert!(backoff(1, &d) <= Duration::from_millis(1200));
        assert!(backoff(200, &d) >= Duration::from_secs(240), "reaches the cap");
    }
    // Jitter: not every blob retries at the same instant.
    let spread: HashSet<Duration> = (0..=255u8).map(|s| backoff(3, &Digest([s; 32]))).collect();
    assert!(spread.len() > 10);
}

fn entry(seed: u8) -> ImageEntry {
    let d = |i: u8| Digest([seed.wrapping_mul(16).wrapping_add(i); 32]);
    let kernel = KernelRef {
        digest: d(4),
        version: "6.1".into(),
        release: "6.1-amd64".into(),
        path: "boot/vmlinuz".into(),
        size: 40,
    };
    ImageEntry {
        source: "dir:/x".into(),
        platform: "linux/amd64".into(),
        layers: vec![
            LayerRef {
                digest: d(1),
                media_type: "tar".into(),
                size: 10,
            },
            LayerRef {
                digest: d(2),
                media_type: "tar".into(),
                size: 20,
            },
        ],
        config: Some(d(3)),
        rootfs_size: 0,
        files: 0,
        artifact: Some(Artifact {
            uncompressed: 0,
            digest: d(5),
            size: 50,
            build_key: "k".into(),
        }),
        kernel: Some(kernel.clone()),
        kernels: vec![
            kernel.clone(),
            KernelRef {
                digest: d(6),
                size: 60,
                ..kernel.clone()
            },
        ],
        created: 0,
        updated: 0,
    }
}

#[test]
fn referenced_is_every_image_and_overlay_blob_with_recorded_sizes() {
    let mut s = State::default();
    for (name, seed) in [("a", 1u8), ("b", 2), ("copy", 1)] {
        s.images.insert(
            name.into(),
            Versioned {
                version: 1,
                value: entry(seed),
            },
        );
    }
    let (site, dist) = (Digest([0xee; 32]), Digest([0xdd; 32]));
    s.overlays.insert(
        "o".into(),
        Versioned {
            version: 1,
            value: OverlayEntry {
                site: Some(site),
                distribution: Some(dist),
                updated: 0,
            },
        },
    );
    let r = referenced(&s);
    // The same set as the catalog entries' own lists (what GC used to keep by).
    let blobs: BTreeSet<Digest> = s
        .images
        .values()
        .flat_map(|v| v.value.blobs())
        .chain(s.overlays.values().flat_map(|v| v.value.blobs()))
        .collect();
    assert_eq!(r.keys().copied().collect::<BTreeSet<_>>(), blobs);
    assert_eq!(r.len(), 2 * 6 + 2, "a shared image's blobs once");
    let e = entry(1);
    assert_eq!(
        r[&e.layers[1].digest],
        Need {
            size: Some(20),
            boot: false
        }
    );
    assert_eq!(
        r[&e.config.unwrap()],
        Need {
            size: None,
            boot: false
        }
    );
    assert_eq!(
        r[&e.artifact.unwrap().digest],
        Need {
            size: Some(50),
            boot: true
        }
    );
    assert_eq!(
        r[&e.kernels[1].digest],
        Need {
            size: Some(60),
            boot: true
        }
    );
    assert_eq!(r[&site], Need { size: None, boot: true });

    // Missing: counts and the bytes of what has a recorded size.
    let (_t, cas) = store();
    let m = missing_of(&cas, &r);
    assert_eq!(m.count(), r.len());
    assert_eq!(m.known_bytes(), 2 * (10 + 20 + 40 + 50 + 60));
    assert_eq!(m.unknown_sizes(), 2 + 2, "two configs, two trees");
}

#[test]
fn the_scrub_finds_silent_corruption_the_verify_cache_would_miss() {
    let (_t, cas) = store();
    let good = cas.put_bytes(&vec![7u8; 3 << 20]).unwrap();
    let bad = cas.put_bytes(&vec![9u8; 1 << 20]).unwrap();
    cas.verify(&bad).unwrap(); // cached as good
                               // Flip a byte in place and put the mtime back: size, mtime and inode unchanged.
    let p = cas.path(&bad);
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_at(&[0], 1000).unwrap();
        f.set_modified(mtime).unwrap();
    }
    assert!(
        cas.verify(&bad).is_ok(),
        "the cache does not see it (why the scrub exists)"
    );
    let mut q = cas.quarantine_watch();
    let st = scrub_pass(&cas, 0, &CancellationToken::new()).unwrap();
    assert_eq!(
        st,
        ScrubStats {
            blobs: 1,
            bytes: 3 << 20,
            corrupt: 1
        }
    );
    assert!(!cas.contains(&bad), "quarantined");
    assert!(cas.contains(&good));
    assert!(q.has_changed().unwrap(), "the sync is woken to fetch it again");
    q.borrow_and_update();
    assert!(matches!(cas.verify(&bad), Err(CasError::Missing(_))));
}

#[test]
fn the_scrub_paces_its_reads() {
    let (_t, cas) = store();
    for i in 0..4u8 {
        cas.put_bytes(&vec![i; 1 << 20]).unwrap();
    }
    // 4 MiB at 8 MiB/s: about half a second (chunks are paced before they are read).
    let started = Instant::now();
    let st = scrub_pass(&cas, 8 << 20, &CancellationToken::new()).unwrap();
    assert_eq!(st.blobs, 4);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // A stopped scrub does not wait.
    let stop = CancellationToken::new();
    stop.cancel();
    let started = Instant::now();
    scrub_pass(&cas, 1, &stop).unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn config_is_checked() {
    let ok = ArtifactsConfig::default().validate().unwrap();
    assert!(ok.prefetch && ok.transfers == 2 && ok.scrub.is_some());
    let e = ArtifactsConfig {
        transfers: 0,
        ..Default::default()
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("transfers"), "{e}");
    let off = ArtifactsConfig {
        scrub_mib_per_sec: 0,
        scrub_interval_secs: 0,
        ..Default::default()
    };
    assert_eq!(off.validate().unwrap().scrub, None);
}
