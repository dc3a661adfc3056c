//! Faults, injected into the rack lab (`tests/common/rack_lab.rs`: three real `wulfd`
//! in namespaces, management bridge 10.0.0.0/24, rack1 10.10.0.0/24 served by heads 1
//! then 2) and healed again. Each fault names its target by role, resolved when it is
//! injected (the leader of that moment, a follower, rack1's serving primary), so a seed
//! gives the same kinds of faults whoever leads.

use std::path::PathBuf;

use crate::rack_lab::Lab;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// The first live head in rack1's order (the one answering its DHCP).
    RackPrimary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; healed by starting it again.
    Kill(Role),
    /// SIGKILL of two heads at once (no majority); healed by starting both.
    KillTwo,
    /// SIGSTOP (a hung head: sockets open, nothing answers); healed by SIGCONT.
    Stop(Role),
    /// nftables drop between the head and the other heads, both ways (clients on the
    /// management bridge still reach it).
    Partition(Role),
    /// The head hears nothing from the other heads but its packets still reach them.
    PartitionInbound(Role),
    /// Random loss of a share (percent) of management packets on every head (nftables).
    Loss(u8),
    /// Delay and reordering on every head's management link (`tc netem`).
    DelayReorder,
    /// The head's data dir (a small tmpfs) filled up.
    DiskFull(Role),
    /// One byte of one of the head's CAS blobs flipped.
    CorruptBlob(Role),
    /// The head's wall clock jumps by this many seconds (libfaketime), monotonic time
    /// untouched.
    ClockJump(Role, i64),
    /// Every fsync/fdatasync/sync_file_range of the head takes this many more ms
    /// (`chaos/slowfsync.c`, preloaded).
    SlowFsync(Role, u32),
}

impl Fault {
    pub fn name(&self) -> String {
        match self {
            Fault::Kill(r) => format!("SIGKILL {r:?}"),
            Fault::KillTwo => "SIGKILL two heads".into(),
            Fault::Stop(r) => format!("SIGSTOP {r:?}"),
            Fault::Partition(r) => format!("partition {r:?} from the other heads"),
            Fault::PartitionInbound(r) => format!("one-way partition: {r:?} hears no head"),
            Fault::Loss(p) => format!("{p} % loss on the management network"),
            Fault::DelayReorder => "delay 50 ms ± 20, 10 % reordering on the management network".into(),
            Fault::DiskFull(r) => format!("full disk on {r:?}"),
            Fault::CorruptBlob(r) => format!("corrupted CAS blob on {r:?}"),
            Fault::ClockJump(r, s) => format!("clock jump {s:+} s on {r:?}"),
            Fault::SlowFsync(r, ms) => format!("fsync {ms} ms slower on {r:?}"),
        }
    }

    /// Why this fault cannot run here, or None.
    pub fn unavailable(&self) -> Option<String> {
        match self {
            Fault::DelayReorder => {
                (!netem_available()).then(|| "tc netem is not available (this kernel has no sch_netem)".to_owned())
            }
            Fault::ClockJump(..) => faketime_lib()
                .is_none()
                .then(|| "libfaketime is not installed (apt-get install faketime)".to_owned()),
            Fault::SlowFsync(..) => slowfsync_lib().err(),
            _ => None,
        }
    }
}

/// Which heads (0-based) a fault hit, and what healing it needs.
#[derive(Debug, Clone)]
pub struct Injected {
    pub fault: Fault,
    pub heads: Vec<usize>,
    /// For a corrupted blob: its path and digest.
    pub blob: Option<(PathBuf, String)>,
}

pub fn netem_available() -> bool {
    let ns = format!("wpnetem{}", std::process::id());
    let sh = |s: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(s)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = sh(&format!(
        "ip netns add {ns} && ip -n {ns} link add a type dummy && ip -n {ns} link set a up && \
         ip netns exec {ns} tc qdisc add dev a root netem delay 1ms"
    ));
    sh(&format!("ip netns del {ns}"));
    ok
}

pub fn faketime_lib() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/lib64/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// `wwctl` from the management bridge against every head, with its own `--timeout`.
pub fn wwctl(lab: &Lab, timeout_secs: u64, args: &str) -> std::process::Output {
    lab.sw.sh(&format!(
        "{} --timeout {timeout_secs} --cert {} --heads 10.0.0.1:9701,10.0.0.2:9701,10.0.0.3:9701 {args}",
        env!("CARGO_BIN_EXE_wwctl"),
        lab.cert().display()
    ))
}

/// The slow-fsync shim, built once per run into the target dir.
pub fn slowfsync_lib() -> Result<PathBuf, String> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("chaos/slowfsync.c");
            let out = std::env::temp_dir().join(format!("wulfpack-slowfsync-{}.so", std::process::id()));
            let o = std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .arg("-ldl")
                .output()
                .map_err(|e| format!("no C compiler to build the slow-fsync shim (cc: {e})"))?;
            if !o.status.success() {
                return Err(format!(
                    "cannot build the slow-fsync shim: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Ok(out)
        })
        .clone()
}

/// The file the slow-fsync shim of head `i` reads its delay (ms) from.
pub fn fsync_file(lab: &Lab, i: usize) -> PathBuf {
    lab.dir.path().join(format!("fsync-delay{}", i + 1))
}

/// The heads' roles now, from `wwctl cluster status -o json` (0-based indexes).
pub fn leader(lab: &Lab) -> Option<usize> {
    let o = wwctl(lab, 3, "cluster status -o json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["heads"]
        .as_array()?
        .iter()
        .find(|h| h["role"] == "Leader")
        .and_then(|h| h["id"].as_u64())
        .map(|id| id as usize - 1)
}

/// Resolve a role to a live head (None: no such head now, e.g. no leader).
pub fn resolve(lab: &Lab, role: Role, rng: &mut Rng) -> Option<usize> {
    let live: Vec<usize> = (0..3).filter(|&i| lab.pids[i].is_some()).collect();
    match role {
        Role::Leader => leader(lab).filter(|l| live.contains(l)),
        Role::Follower => {
            let l = leader(lab);
            let f: Vec<usize> = live.iter().copied().filter(|&i| Some(i) != l).collect();
            (!f.is_empty()).then(|| *rng.pick(&f))
        }
        // rack1 lists head 1 then head 2.
        Role::RackPrimary => [0, 1].into_iter().find(|i| live.contains(i)),
    }
}

fn signal_group(lab: &Lab, i: usize, sig: rustix::process::Signal) {
    if let Some(pid) = lab.pids[i].and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// The `wulfd` process of head `i` (the child of its `timeout` wrapper).
pub fn wulfd_pid(lab: &Lab, i: usize) -> Option<u32> {
    let p = lab.pids[i]?;
    let kids = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).ok()?;
    kids.split_whitespace().next()?.parse().ok()
}

const OTHERS: [&str; 3] = ["10.0.0.2, 10.0.0.3", "10.0.0.1, 10.0.0.3", "10.0.0.1, 10.0.0.2"];

fn nft(lab: &Lab, i: usize, rules: &str) {
    lab.heads[i].ok(&format!(
        "nft add table inet chaos && nft 'add chain inet chaos in {{ type filter hook input priority 0; }}' && \
         nft 'add chain inet chaos out {{ type filter hook output priority 0; }}' && {rules}"
    ));
}

fn nft_clear(lab: &Lab, i: usize) {
    let _ = lab.heads[i].sh("nft delete table inet chaos");
}

/// Inject `fault`; None when its target role has no head now.
pub fn inject(lab: &mut Lab, fault: Fault, rng: &mut Rng) -> Option<Injected> {
    use rustix::process::Signal;
    let mut inj = Injected {
        fault,
        heads: vec![],
        blob: None,
    };
    match fault {
        Fault::Kill(r) => {
            let i = resolve(lab, r, rng)?;
            lab.kill(i);
            inj.heads.push(i);
        }
        Fault::KillTwo => {
            let live: Vec<usize> = (0..3).filter(|&i| lab.pids[i].is_some()).collect();
            if live.len() < 3 {
                return None;
            }
            let spare = rng.range(0, 2) as usize;
            for i in (0..3).filter(|&i| i != spare) {
                lab.kill(i);
                inj.heads.push(i);
            }
        }
        Fault::Stop(r) => {
            let i = resolve(lab, r, rng)?;
            signal_group(lab, i, Signal::STOP);
            inj.heads.push(i);
        }
        Fault::Partition(r) => {
            let i = resolve(lab, r, rng)?;
            let o = OTHERS[i];
            nft(
                lab,
                i,
                &format!(
                    "nft add rule inet chaos in ip saddr {{ {o} }} drop && nft add rule inet chaos out ip daddr {{ {o} }} drop"
                ),
            );
            inj.heads.push(i);
        }
        Fault::PartitionInbound(r) => {
            let i = resolve(lab, r, rng)?;
            nft(
                lab,
                i,
                &format!("nft add rule inet chaos in ip saddr {{ {} }} drop", OTHERS[i]),
            );
            inj.heads.push(i);
        }
        Fault::Loss(p) => {
            for i in 0..3 {
                nft(
                    lab,
                    i,
                    &format!(
                        "nft add rule inet chaos in iifname m0 numgen random mod 100 '<' {p} drop && \
                         nft add rule inet chaos out oifname m0 numgen random mod 100 '<' {p} drop"
                    ),
                );
                inj.heads.push(i);
            }
        }
        Fault::DelayReorder => {
            for i in 0..3 {
                lab.heads[i].ok("tc qdisc add dev m0 root netem delay 50ms 20ms reorder 10% 50%");
                inj.heads.push(i);
            }
        }
        Fault::DiskFull(r) => {
            let i = resolve(lab, r, rng)?;
            let dir = lab.dir.path().join(format!("data{}", i + 1));
            // dd stops at ENOSPC; that is the point.
            let _ = std::process::Command::new("dd")
                .args(["if=/dev/zero", &format!("of={}/chaos-filler", dir.display()), "bs=1M"])
                .output();
            inj.heads.push(i);
        }
        Fault::CorruptBlob(r) => {
            let i = resolve(lab, r, rng)?;
            let dir = lab.dir.path().join(format!("data{}", i + 1));
            let blobs = blob_files(&dir);
            if blobs.is_empty() {
                return None;
            }
            let (path, digest) = rng.pick(&blobs).clone();
            let mut bytes = std::fs::read(&path).ok()?;
            if bytes.is_empty() {
                return None;
            }
            let at = rng.range(0, bytes.len() as u64 - 1) as usize;
            bytes[at] ^= 0x5a;
            std::fs::write(&path, &bytes).ok()?;
            inj.heads.push(i);
            inj.blob = Some((path, digest));
        }
        Fault::ClockJump(r, secs) => {
            let i = resolve(lab, r, rng)?;
            std::fs::write(clock_file(lab, i), format!("{secs:+}\n")).ok()?;
            inj.heads.push(i);
        }
        Fault::SlowFsync(r, ms) => {
            let i = resolve(lab, r, rng)?;
            std::fs::write(fsync_file(lab, i), format!("{ms}\n")).ok()?;
            inj.heads.push(i);
        }
    }
    Some(inj)
}

/// Undo `inj`. Kills are healed by a start; a head found dead after another fault (it
/// exited on a full disk, say) is started again too, and that is reported.
pub fn heal(lab: &mut Lab, inj: &Injected) -> Vec<String> {
    use rustix::process::Signal;
    let mut notes = Vec::new();
    for &i in &inj.heads {
        match inj.fault {
            Fault::Kill(_) | Fault::KillTwo => restart(lab, i),
            Fault::Stop(_) => signal_group(lab, i, Signal::CONT),
            Fault::Partition(_) | Fault::PartitionInbound(_) | Fault::Loss(_) => nft_clear(lab, i),
            Fault::DelayReorder => {
                let _ = lab.heads[i].sh("tc qdisc del dev m0 root");
            }
            Fault::DiskFull(_) => {
                let _ = std::fs::remove_file(lab.dir.path().join(format!("data{}/chaos-filler", i + 1)));
            }
            Fault::CorruptBlob(_) => {}
            Fault::ClockJump(..) => {
                let _ = std::fs::write(clock_file(lab, i), "+0\n");
            }
            Fault::SlowFsync(..) => {
                let _ = std::fs::write(fsync_file(lab, i), "0\n");
            }
        }
    }
    let just_started = |i: usize| matches!(inj.fault, Fault::Kill(_) | Fault::KillTwo) && inj.heads.contains(&i);
    for i in 0..3 {
        if !just_started(i) && lab.pids[i].is_some() && wulfd_pid(lab, i).is_none() {
            notes.push(format!(
                "head {} had exited (last log line: {}); started again",
                i + 1,
                lab.log(i).lines().last().unwrap_or("")
            ));
            lab.kill(i);
            restart(lab, i);
        }
    }
    notes
}

/// Start head `i` again, keeping its earlier log beside (`wulfdN.log.1`, `.2`, …): the
/// lab truncates the log on start.
pub fn restart(lab: &mut Lab, i: usize) {
    let log = lab.dir.path().join(format!("wulfd{}.log", i + 1));
    let n = (1..)
        .find(|n| !log.with_extension(format!("log.{n}")).exists())
        .unwrap_or(1);
    let _ = std::fs::rename(&log, log.with_extension(format!("log.{n}")));
    lab.start(i);
}

/// The file libfaketime reads head `i`'s clock offset from (re-read on every call).
pub fn clock_file(lab: &Lab, i: usize) -> PathBuf {
    lab.dir.path().join(format!("clock{}", i + 1))
}

/// Every CAS blob under a data dir: (path, "sha256:<hex>") for files named by a digest.
pub fn blob_files(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    out.push((p.clone(), format!("sha256:{name}")));
                }
            }
        }
    }
    out.sort();
    out
}

/// A full-disk fault needs the head's data dir on a small filesystem of its own: a
/// tmpfs mounted before the head starts, unmounted on drop.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    pub fn mount(dir: PathBuf, mib: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "chaos-tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Sizes for the growth invariant: a head's RSS (KiB), log bytes and data dir bytes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    pub rss_kib: u64,
    pub log_bytes: u64,
    pub disk_bytes: u64,
}

pub fn sample(lab: &Lab, i: usize) -> Sample {
    let rss_kib = wulfd_pid(lab, i)
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let log_bytes = std::fs::metadata(lab.dir.path().join(format!("wulfd{}.log", i + 1)))
        .map(|m| m.len())
        .unwrap_or(0);
    Sample {
        rss_kib,
        log_bytes,
        disk_bytes: dir_bytes(&lab.dir.path().join(format!("data{}", i + 1))),
    }
}

fn dir_bytes(d: &std::path::Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(d) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
