//! `wulfd`: one head of a wulfpack cluster. See `wulfpack::daemon`.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

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
}

fn main() {
    if let Err(e) = run() {
        eprintln!("wulfd: {}", wulfpack::error::report(e.as_ref()));
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let cfg = wulfpack::daemon::Settings::load(&args.config)?;
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
