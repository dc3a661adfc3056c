//! `wwctl`: Warewulf-style control of a wulfpack cluster. See `wulfpack::cli`.
use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WWCTL_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = wulfpack::cli::Cli::parse();
    let mut out = std::io::stdout().lock();
    if let Err(e) = wulfpack::cli::run(cli, &mut out).await {
        eprintln!("ERROR: {}", wulfpack::error::report(e.as_ref()));
        std::process::exit(1);
    }
}
