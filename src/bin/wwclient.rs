//! `wwclient`: the node agent. See `wulfpack::agent`.
use std::path::PathBuf;

use clap::Parser;

/// Keeps this node's runtime overlay fresh: fetches it from the heads of its rack
/// every interval (SIGHUP: now) and applies it atomically.
#[derive(Debug, Parser)]
#[command(name = "wwclient", version)]
struct Args {
    /// Config file (heads, interval, timeout, secure, assetkey).
    #[arg(long, default_value = wulfpack::agent::config::DEFAULT_PATH)]
    config: PathBuf,
    /// This node's wwid (a MAC); default: `wwid=` from the kernel command line, else
    /// the boot interface's MAC.
    #[arg(long)]
    wwid: Option<String>,
    /// File holding the kernel command line.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Directory to apply the overlay into.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Fetch and apply once, then exit (non-zero if no head served it).
    #[arg(long)]
    once: bool,
}

fn main() {
    let a = Args::parse();
    let o = wulfpack::agent::Options {
        config: a.config,
        cmdline: a.cmdline,
        wwid: a.wwid,
        root: a.root,
        once: a.once,
    };
    if let Err(e) = wulfpack::agent::run(&o) {
        eprintln!("wwclient: ERROR: {}", wulfpack::error::report(&e));
        std::process::exit(1);
    }
}
