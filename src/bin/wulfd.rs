//! `wulfd`: one head of a wulfpack cluster. See `wulfpack::daemon`.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use wulfpack::logging::LogFormat;

#[derive(Parser)]
#[command(
    name = "wulfd",
    version,
    about = "A wulfpack head: Raft member, admin API (and later boot services)"
)]
struct Args {
    /// Head config file (YAML); see cluster/examples/wulfd.yaml.
    #[arg(short, long, env = "WULFD_CONFIG", default_value = "/etc/wulfpack/wulfd.yaml")]
    config: PathBuf,
    /// Log lines on stderr: `text` (colour only on a terminal and without NO_COLOR) or
    /// `json` (one object per line, for journald/collectors). Levels and targets come from
    /// RUST_LOG (e.g. `RUST_LOG=info,wulfpack::raft=debug`); see docs/OPERATIONS.md.
    #[arg(long, env = "WULFD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// As `insecure: true` in the config: plaintext gRPC without credentials, for test
    /// harnesses that write their own config (Warewulf's conformance runner). Refused
    /// with a `tls:` section in the config.
    #[arg(long, env = "WULFD_INSECURE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::FalseyValueParser::new())]
    insecure: bool,
}

/// What wulfd logs when RUST_LOG is unset: info, except chatty dependencies; openraft's
/// per-RPC failure lines are left to the transport, which logs peer outages collapsed.
fn default_logging() -> wulfpack::logging::Defaults {
    wulfpack::logging::Defaults {
        directives: format!(
            "info,{},sled=warn,h2=warn,tower=warn",
            wulfpack::raft::OPENRAFT_LOG_DIRECTIVES
        ),
        drop: Some(wulfpack::raft::is_openraft_peer_rpc_error),
    }
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wulfd: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(run());
    // Not `drop(rt)`: it waits for every blocking task, and a storage write stuck in the
    // kernel (a full or hung disk, the reason Raft stopped) would keep the process up
    // for ever instead of exiting for its service manager to restart it.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Err(e) = r {
        eprintln!("wulfd: {}", wulfpack::error::report(e.as_ref()));
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    wulfpack::logging::init(args.log_format, "RUST_LOG", default_logging());
    let cfg = if args.insecure {
        let mut c = wulfpack::daemon::config::HeadConfig::load(&args.config)?;
        c.insecure = true;
        wulfpack::daemon::Settings::try_from(c)?
    } else {
        wulfpack::daemon::Settings::load(&args.config)?
    };
    let grpc = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", cfg.listen))?;
    let http = tokio::net::TcpListener::bind(&cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", cfg.http_listen))?;
    tracing::info!(id = cfg.id, listen = %cfg.listen, data_dir = %cfg.data_dir.display(), "wulfd starting");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let head = wulfpack::daemon::Head::start(cfg, wulfpack::daemon::Listeners { grpc, http }, shutdown).await?;
    head.join().await?;
    Ok(())
}
