//! The real distribution root shared by the image benchmarks: Debian bookworm
//! minbase with a kernel (about 750 MB, 12k entries), made once with debootstrap and
//! cached, or taken from `WULFPACK_BENCH_ROOT`.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

pub const ROOT_CACHE: &str = "/var/tmp/wulfpack-bench-root";

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Install missing tools with apt-get (benchmarks run as root on a lab machine).
pub fn ensure_tools(tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        eprintln!("installing {}", missing.join(" "));
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && apt-get install -y -qq {}",
                missing.join(" ")
            ))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot install {}; install them and run again", missing.join(" "));
    }
}

/// The distribution root the image benchmarks use (debootstrap once, cached).
pub fn ensure_root() -> PathBuf {
    if let Ok(dir) = std::env::var("WULFPACK_BENCH_ROOT") {
        return PathBuf::from(dir);
    }
    let root = PathBuf::from(ROOT_CACHE);
    if root.join("usr/bin").is_dir() {
        return root;
    }
    let tmp = PathBuf::from(format!("{ROOT_CACHE}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    eprintln!(
        "debootstrap --variant=minbase --include=linux-image-amd64 bookworm {} (once)",
        tmp.display()
    );
    let ok = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=linux-image-amd64", "bookworm"])
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "debootstrap failed (needs root and the Debian mirror); or set WULFPACK_BENCH_ROOT"
    );
    fs::rename(&tmp, &root).unwrap();
    root
}
