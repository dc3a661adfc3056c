//! `wwctl power` and `wwctl node sensors` with the real ipmitool over RMCP+ against
//! OpenIPMI's `ipmi_sim` BMCs on loopback (three up, one stopped), run by three real
//! `wulfd` processes: per-node lines (golden), the stopped BMC fails within its own
//! deadline while the others succeed, a node without an IPMI address gets its own
//! error, the exit code is 1; a rack's nodes run on the rack's first head, and on the
//! receiving head (with a note) once that head is dead; the password is in no
//! process's argv while the ipmitools run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::golden;
use crate::proc_cluster::{run_wwctl, wait_until, ProcCluster, WwctlRun};

const WULFD: &str = env!("CARGO_BIN_EXE_wulfd");
const WWCTL: &str = env!("CARGO_BIN_EXE_wwctl");

fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// ipmi_sim, sdrcomp and ipmitool, installed if missing; None (and SKIP printed) if
/// they cannot be.
fn tools() -> Option<PathBuf> {
    // One installer at a time: the tests of this module run in parallel, dpkg does not.
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let have = || ["ipmi_sim", "sdrcomp", "ipmitool"].iter().all(|p| on_path(p).is_some());
    if !have() {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "openipmi", "ipmitool"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get").arg("update").stdout(Stdio::null()).status();
            install();
        }
    }
    if !have() {
        eprintln!("SKIP ipmi: ipmi_sim/sdrcomp/ipmitool missing and `apt-get install openipmi ipmitool` failed");
        return None;
    }
    on_path("ipmitool")
}

/// A free UDP port on `ip`.
fn udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// One simulated BMC: its own state directory and power-state file, stopped by PID.
struct Bmc {
    dir: tempfile::TempDir,
    /// Its own loopback address (nodes may not share an IPMI address).
    ip: String,
    port: u16,
    child: Option<Child>,
}

const USER: &str = "admin";

impl Bmc {
    /// `sol`: the serial device its serial-over-LAN connects to.
    fn start(ipmitool: &Path, name: &str, ip: &str, password: &str, sol: Option<&str>) -> Bmc {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = udp_port(ip);
        // ipmi_sim calls the hook as `set power 0|1` (and `set reset|shutdown 1`) and
        // `get power`, which must print `power:0|1`.
        let hook = d.join("hook.sh");
        std::fs::write(
            &hook,
            format!(
                "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$1 $2\" in\n  \"set power\") echo \"$3\" > {state} ;;\n  \"get power\") echo \"power:$(cat {state} 2>/dev/null || echo 0)\" ;;\nesac\n",
                log = d.join("hook.log").display(),
                state = d.join("power").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            d.join("lan.conf"),
            format!(
                "name \"{name}\"\nset_working_mc 0x20\n  startlan 1\n    addr {ip} {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n{sol}  chassis_control \"{hook}\"\n  user 2 true \"{USER}\" \"{password}\" admin 10 none md2 md5 straight\n",
                hook = hook.display(),
                sol = sol.map(|d| format!("  sol \"{d}\" 115200\n")).unwrap_or_default()
            ),
        )
        .unwrap();
        // One temperature sensor reading 42 °C, with its SDR.
        std::fs::write(
            d.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsensor_add 0x20 0 1 0x01 0x01\nsensor_set_event_support 0x20 0 1 enable scanning per-state 000000000000000 000000000000000 000000000000000 000000000000000\nsensor_set_value 0x20 0 1 42 0\nmc_enable 0x20\n",
        )
        .unwrap();
        std::fs::write(
            d.join("main.sdrs"),
            "sdr type 1\n sensor_owner_id 0x20\n sensor_owner_lun 0\n channel_number 0\n sensor_number 1\n entity_id system_board\n entity_instance 1\n sensor_type Temperature\n event_reading_type_code 1\n sensor_direction input\n analog_data_format unsigned\n rate_unit none\n modifier_unit none\n percentage false\n base_unit degrees_C\n modifier_unit_code unspecified\n linearization linear\n m 1\n tolerance 0\n b 0\n accuracy 0\n accuracy_exp 0\n r_exp 0\n b_exp 0\n id_string \"MB Temp\"\nendsdr\n",
        )
        .unwrap();
        let sdr_dir = d.join("state/ipmi_sim").join(name);
        std::fs::create_dir_all(&sdr_dir).unwrap();
        let st = Command::new("sdrcomp")
            .arg("-o")
            .arg(sdr_dir.join("sdr.20.main"))
            .arg(d.join("main.sdrs"))
            .status()
            .unwrap();
        assert!(st.success(), "sdrcomp failed");
        let log = std::fs::File::create(d.join("sim.log")).unwrap();
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("sim.emu"))
            .arg("-n")
            .arg("-s")
            .arg(d.join("state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let bmc = Bmc {
            dir,
            ip: ip.to_string(),
            port,
            child: Some(child),
        };
        wait_until(10, &format!("BMC {name} answers"), || {
            Command::new(ipmitool)
                .args(bmc.ipmitool_args())
                .args(["chassis", "power", "status"])
                .env("IPMI_PASSWORD", password)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        bmc
    }

    fn ipmitool_args(&self) -> Vec<String> {
        ["-I", "lanplus", "-C", "3", "-U", USER, "-E", "-H", &self.ip, "-p"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.port.to_string()])
            .collect()
    }

    /// The power state as the BMC's chassis hook last set it.
    fn power(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("power"))
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_string()
    }

    /// What the hook was asked, in order.
    fn hook_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hook.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Watches every process's argv while it runs: what held the password, and how many
/// ipmitool argvs (with `-E`) it saw.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    found: Arc<Mutex<(Vec<String>, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArgvWatch {
    fn start(password: &str) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(Mutex::new((Vec::new(), 0)));
        let (s, f, pw) = (stop.clone(), found.clone(), password.to_string());
        let me = std::process::id();
        let thread = std::thread::spawn(move || {
            // Bounded: stops when told, or after 120 s.
            let end = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                        continue;
                    };
                    if pid == me {
                        continue; // this test's own process holds the password in memory, not argv
                    }
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let argv = String::from_utf8_lossy(&raw).replace('\0', " ");
                    let mut g = f.lock().unwrap();
                    if argv.contains(&pw) {
                        g.0.push(format!("{pid}: {argv}"));
                    }
                    if argv.contains("ipmitool") && argv.contains(" -E ") && argv.contains("chassis") {
                        g.1 += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        ArgvWatch {
            stop,
            found,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.found.lock().unwrap())
    }
}

fn json(r: &WwctlRun) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", r.stdout, r.stderr))
        .as_array()
        .unwrap()
        .clone()
}

fn by_node<'a>(rows: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["node"] == node)
        .unwrap_or_else(|| panic!("no result for {node}: {rows:?}"))
}

#[test]
fn power_verbs_and_sensors_through_ipmitool_against_simulated_bmcs() {
    let Some(ipmitool) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let password = format!("pw-{}-{nanos}", std::process::id());
    // The heads run ipmitool through a wrapper that records each argv and whether
    // the password came through the environment, then becomes ipmitool.
    let argv_log = work.path().join("argv.log");
    let wrapper = work.path().join("ipmitool");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$$ ${{IPMI_PASSWORD:+env-set}} $*\" >> {}\nexec {} \"$@\"\n",
            argv_log.display(),
            ipmitool.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let bmcs: Vec<Bmc> = (1..=3)
        .map(|i| {
            Bmc::start(
                &ipmitool,
                &format!("sim{i}"),
                &format!("127.0.0.{}", 10 + i),
                &password,
                None,
            )
        })
        .collect();
    // A BMC that went down: started, then stopped; its port now answers nothing.
    let mut gone = Bmc::start(&ipmitool, "sim4", "127.0.0.14", &password, None);
    gone.stop();
    // A BMC that refuses the cluster's password (n06): it fails at once, not at its deadline.
    let strict = Bmc::start(&ipmitool, "sim5", "127.0.0.15", "another-password", None);

    let mut p = ProcCluster::start(
        Path::new(WULFD),
        3,
        &format!(
            "power:\n  ipmitool: \"{}\"\n  forward_probe_ms: 1000\n",
            wrapper.display()
        ),
    );
    // Head 1 first: it is the head that answers, unless it is down.
    let heads = p.heads_from(0);
    let ww = |args: &[&str]| run_wwctl(Path::new(WWCTL), &heads, args);
    wait_until(30, "cluster initialised", || {
        let r = ww(&["--timeout", "2", "profile", "list"]);
        r.ok() && r.stdout.lines().any(|l| l.starts_with("default"))
    });
    let ok = |args: &[&str]| {
        let r = ww(args);
        assert!(r.ok(), "wwctl {args:?}: {}\n{}", r.stdout, r.stderr);
        r
    };

    // Rack r1 is served first by head 3: n01 and n02 (addresses in r1) run there.
    ok(&[
        "rack",
        "add",
        "r1",
        "--network",
        "10.77.0.0/24",
        "--head",
        "3=10.77.0.253",
        "--head",
        "1=10.77.0.251",
    ]);
    let bmc_addrs = [&bmcs[0], &bmcs[1], &bmcs[2], &gone].map(|b| (b.ip.clone(), b.port.to_string()));
    for (i, (bmc_ip, port)) in bmc_addrs.iter().enumerate() {
        let name = format!("n0{}", i + 1);
        let mut args = vec!["node", "add", &name];
        let ip = format!("10.77.0.{}", i + 1);
        if i < 2 {
            args.extend(["--ipaddr", &ip]);
        }
        args.extend([
            "--ipmiaddr",
            bmc_ip,
            "--ipmiport",
            port,
            "--ipmiuser",
            USER,
            "--ipmipass",
            &password,
            "--ipmiinterface",
            "lanplus",
            "--ipmitagadd",
            "cipher=3",
        ]);
        ok(&args);
    }
    ok(&["node", "add", "n05", "--comment", "no BMC"]);
    let strict_port = strict.port.to_string();
    ok(&[
        "node",
        "add",
        "n06",
        "--ipmiaddr",
        &strict.ip,
        "--ipmiport",
        &strict_port,
        "--ipmiuser",
        USER,
        "--ipmipass",
        &password,
        "--ipmiinterface",
        "lanplus",
        "--ipmitagadd",
        "cipher=3",
    ]);
    // Every head that will run nodes knows all six (a forwarded node unknown to the
    // rack head would come back as "does not know this node yet").
    wait_until(20, "heads 1 and 3 know the nodes", || {
        let r = ww(&["-o", "json", "power", "status", "n[01-06]", "--show"]);
        !r.stdout.is_empty() && json(&r).len() == 6 && !r.stdout.contains("does not know this node")
    });

    // `--show`: the command, never the password.
    let r = ww(&["power", "on", "n01", "--show"]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(r.stdout.starts_with("n01: IPMI_PASSWORD=... "), "{}", r.stdout);
    assert!(r.stdout.contains(&format!(
        "-I lanplus -C 3 -p {} -H 127.0.0.11 -U admin -E chassis power on",
        bmcs[0].port
    )));
    assert!(!r.stdout.contains(&password));

    // status: three answer, the stopped BMC fails after its own 3 s, n05 has no
    // address, n06's BMC refuses the password; exit code 1. Meanwhile no process's argv holds the password.
    let watch = ArgvWatch::start(&password);
    let r = ww(&["power", "status", "n[01-06]", "--ipmi-timeout", "3"]);
    let (leaks, ipmitools_seen) = watch.finish();
    assert_eq!(r.code, 1, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("3 of 6 nodes failed"), "{}", r.stderr);
    assert!(leaks.is_empty(), "the password is in a process's argv: {leaks:?}");
    assert!(ipmitools_seen > 0, "the argv watch never saw an ipmitool run");
    assert!(
        r.took >= Duration::from_secs(3) && r.took < Duration::from_secs(8),
        "the stopped BMC's deadline is 3 s; the call took {:?}",
        r.took
    );
    golden("power_status.txt", &r.stdout);

    // Where each ran, and how long the stopped BMC took.
    let r = ww(&["-o", "json", "power", "status", "n[01-06]", "--ipmi-timeout", "3"]);
    assert_eq!(r.code, 1);
    let rows = json(&r);
    for (node, head) in [("n01", 3), ("n02", 3), ("n03", 1), ("n04", 1), ("n05", 1), ("n06", 1)] {
        assert_eq!(by_node(&rows, node)["head"], head, "{node}: {rows:?}");
    }
    let n04 = by_node(&rows, "n04");
    let ms = n04["millis"].as_u64().unwrap();
    assert!(
        (3000..4500).contains(&ms),
        "n04 failed after {ms} ms, its deadline is 3 s"
    );
    assert_eq!(n04["ok"], false);
    assert_eq!(by_node(&rows, "n05")["ok"], false);
    assert!(by_node(&rows, "n05")["output"]
        .as_str()
        .unwrap()
        .contains("no IPMI address"));
    for n in ["n01", "n02", "n03"] {
        assert_eq!(by_node(&rows, n)["ok"], true, "{rows:?}");
    }
    let n06 = by_node(&rows, "n06");
    assert_eq!(n06["ok"], false);
    assert!(
        n06["output"]
            .as_str()
            .unwrap()
            .contains("Unable to establish IPMI v2 / RMCP+ session"),
        "{n06}"
    );
    assert!(
        n06["millis"].as_u64().unwrap() < 2000,
        "a refused password is no timeout: {n06}"
    );

    // Every power verb on the three live BMCs, checked at the BMCs themselves.
    let mut transcript = String::new();
    let mut verb = |v: &str, want_power: Option<&str>| {
        let r = ok(&["power", v, "n[01-03]"]);
        transcript.push_str(&format!("$ wwctl power {v} n[01-03]\n{}", r.stdout));
        if let Some(want) = want_power {
            for (i, b) in bmcs.iter().enumerate() {
                assert_eq!(b.power(), want, "BMC {} after power {v}", i + 1);
            }
        }
    };
    verb("on", Some("1"));
    verb("status", None);
    verb("cycle", None);
    verb("reset", None);
    verb("soft", None);
    verb("off", Some("0"));
    verb("status", None);
    golden("power_verbs.txt", &transcript);
    for b in &bmcs {
        let log = b.hook_log();
        for want in ["set power 1", "set reset 1", "set shutdown 1", "set power 0"] {
            assert!(log.contains(want), "BMC hook never got {want:?}: {log}");
        }
    }

    // Sensors: the SDR list, and with --full every sensor; same per-node errors.
    let r = ww(&["node", "sensors", "n[01-06]", "--ipmi-timeout", "3"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let full = ww(&["node", "sensors", "--full", "n01,n03,n05"]);
    assert_eq!(full.code, 1, "{}", full.stderr);
    golden(
        "node_sensors.txt",
        &format!(
            "$ wwctl node sensors n[01-06]\n{}$ wwctl node sensors --full n01,n03,n05\n{}",
            r.stdout, full.stdout
        ),
    );

    // The wrapper saw every run: password only ever by environment.
    let log = std::fs::read_to_string(&argv_log).unwrap();
    assert!(log.lines().count() >= 20, "{log}");
    for line in log.lines() {
        assert!(!line.contains(&password), "password in argv: {line}");
        assert!(line.contains("env-set") && line.contains(" -E "), "{line}");
    }

    // The rack's head hangs (accepts, answers nothing): after the 1 s probe its node
    // runs on the head that answered.
    p.hang(2, true);
    let r = ww(&["-o", "json", "power", "status", "n01"]);
    p.hang(2, false);
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    let row = by_node(&json(&r), "n01").clone();
    assert_eq!(row["head"], 1, "{row}");
    assert!(
        row["note"]
            .as_str()
            .unwrap()
            .contains("rack head 3 did not answer within 1000 ms"),
        "{row}"
    );
    assert!(r.took < Duration::from_secs(5), "a hung rack head cost {:?}", r.took);

    // The rack's head dies: its nodes run on the head that answered, which says so.
    p.kill(2);
    let r = ww(&["-o", "json", "power", "status", "n01,n02,n03"]);
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    let rows = json(&r);
    for n in ["n01", "n02"] {
        let row = by_node(&rows, n);
        assert_eq!(row["head"], 1, "{row}");
        assert_eq!(row["output"], "Chassis Power is off", "{row}");
        assert!(
            row["note"].as_str().unwrap().contains("rack head 3 did not answer")
                && row["note"].as_str().unwrap().contains("ran on head 1"),
            "{row}"
        );
    }
    assert!(by_node(&rows, "n03")["note"].is_null(), "{rows:?}");
    let r = ww(&["power", "status", "n01"]);
    assert!(r.ok());
    assert_eq!(r.stdout, "n01: Chassis Power is off\n");
    assert!(
        r.stderr.contains("WARNING: n01: rack head 3 did not answer"),
        "{}",
        r.stderr
    );
}

/// Bad input: no node, a pattern that names nothing, an unknown node; each a clear
/// error and exit code 1 (usage errors 2), without a head having to run anything.
#[test]
fn power_refuses_what_names_no_node() {
    let p = ProcCluster::start(Path::new(WULFD), 1, "");
    let heads = p.all_heads();
    let ww = |args: &[&str]| run_wwctl(Path::new(WWCTL), &heads, args);
    wait_until(30, "cluster initialised", || {
        ww(&["--timeout", "2", "profile", "list"]).ok()
    });
    let r = ww(&["power", "on"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = ww(&["power", "on", "ghost[1-3]"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no nodes found among ghost1, ghost2, ghost3"),
        "{}",
        r.stderr
    );
    let r = ww(&["node", "sensors", ","]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("names no node"), "{}", r.stderr);
    let r = ww(&["profile", "sensors", "default"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nodes only"), "{}", r.stderr);
}

/// `node console`: wwctl runs `ipmitool ... sol activate` itself, on this terminal,
/// with the node's merged ipmi fields (escape character included) and the password in
/// the environment only; a node without an address is its own error.
#[test]
fn console_runs_sol_activate_here_with_the_password_in_the_environment() {
    let p = ProcCluster::start(Path::new(WULFD), 1, "");
    let heads = p.all_heads();
    let ww = |args: &[&str]| run_wwctl(Path::new(WWCTL), &heads, args);
    wait_until(30, "cluster initialised", || {
        ww(&["--timeout", "2", "profile", "list"]).ok()
    });
    // The BMC settings come from the profile, as Warewulf merges them.
    let r = ww(&[
        "profile",
        "set",
        "default",
        "-y",
        "--ipmiuser",
        "admin",
        "--ipmipass",
        "c0nsole-pw",
        "--ipmiinterface",
        "lanplus",
        "--ipmiescapechar",
        "&",
    ]);
    assert!(r.ok(), "{}", r.stderr);
    assert!(ww(&["node", "add", "c1", "--ipmiaddr", "127.0.0.21"]).ok());
    assert!(ww(&["node", "add", "c2"]).ok());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv.log");
    let fake = dir.path().join("ipmitool");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"pw=$IPMI_PASSWORD argv=$*\" >> {}\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(WWCTL)
        .args(["--heads", &heads, "node", "console", "c[1-2]"])
        .env("WWCTL_IPMITOOL", &fake)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("c2: no IPMI address"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "pw=c0nsole-pw argv=-I lanplus -e & -H 127.0.0.21 -U admin -E sol activate\n"
    );
}

/// A node's serial port: a pseudo-terminal whose far end a simulated BMC opens for
/// serial over LAN. It prints a line every 200 ms and keeps what it receives.
struct SerialPort {
    path: String,
    got: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SerialPort {
    fn open() -> SerialPort {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let path = ptsname(&master, Vec::new()).unwrap().into_string().unwrap();
        let flags = rustix::fs::fcntl_getfl(&master).unwrap();
        rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
        let (got, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: until told, or 60 s.
            let end = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 1024];
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                let _ = rustix::io::write(&master, b"hello-from-node\r\n");
                while let Ok(n) = rustix::io::read(&master, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    g.lock().unwrap().extend_from_slice(&buf[..n]);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        SerialPort {
            path,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn got(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }
}

impl Drop for SerialPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed (by PID) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `node console` end to end: the real ipmitool opens a serial-over-LAN session with a
/// simulated BMC whose serial port is a pseudo-terminal; the node's output reaches the
/// operator, the operator's keys reach the node, and `~.` ends the session with exit 0.
#[test]
fn console_is_a_real_sol_session_through_a_simulated_bmc() {
    use std::io::{Read, Write};
    let Some(ipmitool) = tools() else { return };
    let serial = SerialPort::open();
    let bmc = Bmc::start(&ipmitool, "sol1", "127.0.0.31", "sol-pw", Some(&serial.path));
    let p = ProcCluster::start(Path::new(WULFD), 1, "");
    let heads = p.all_heads();
    let ww = |args: &[&str]| run_wwctl(Path::new(WWCTL), &heads, args);
    wait_until(30, "cluster initialised", || {
        ww(&["--timeout", "2", "profile", "list"]).ok()
    });
    let port = bmc.port.to_string();
    let r = ww(&[
        "node",
        "add",
        "s1",
        "--ipmiaddr",
        &bmc.ip,
        "--ipmiport",
        &port,
        "--ipmiuser",
        USER,
        "--ipmipass",
        "sol-pw",
        "--ipmiinterface",
        "lanplus",
        "--ipmitagadd",
        "cipher=3",
    ]);
    assert!(r.ok(), "{}", r.stderr);

    let mut child = Reaped(
        Command::new(WWCTL)
            .args(["--heads", &heads, "node", "console", "s1"])
            .env("WWCTL_IPMITOOL", &ipmitool)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.0.stdout.take().unwrap();
    let s = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_until(15, "the node's serial output on the operator's side", || {
        seen.lock().unwrap().contains("hello-from-node")
    });
    stdin.write_all(b"typed-by-operator\r").unwrap();
    wait_until(10, "the operator's keys on the node's serial port", || {
        serial.got().contains("typed-by-operator")
    });
    // ipmitool's escape: `~` at the start of a line, then `.`.
    stdin.write_all(b"~.").unwrap();
    let mut status = None;
    wait_until(10, "the session ends on ~.", || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    reader.join().unwrap();
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.unwrap().success(), "{stderr}\n{}", seen.lock().unwrap());
    assert!(
        seen.lock().unwrap().contains("SOL Session operational"),
        "{}",
        seen.lock().unwrap()
    );
}
