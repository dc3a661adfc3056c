//! `wwctl`: Warewulf-style control of a wulfpack cluster. See `wulfpack::cli`.
use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = wulfpack::cli::Cli::parse();
    // Text, colour only on a terminal; levels from WWCTL_LOG (RUST_LOG syntax), else
    // Warewulf's -v (info) and -d (debug), else errors only.
    let level = if cli.debug {
        "debug,h2=info,hyper=info,tower=info"
    } else if cli.verbose {
        "info"
    } else {
        "error"
    };
    wulfpack::logging::init(
        wulfpack::logging::LogFormat::Text,
        "WWCTL_LOG",
        wulfpack::logging::Defaults {
            directives: level.into(),
            drop: None,
        },
    );
    let mut out = std::io::stdout().lock();
    if let Err(e) = wulfpack::cli::run(cli, &mut out).await {
        // A usage error found after parsing exits as clap's own do (2).
        if let Some(usage) = e.downcast_ref::<clap::Error>() {
            usage.exit();
        }
        eprintln!("ERROR: {}", wulfpack::error::report(e.as_ref()));
        std::process::exit(1);
    }
}
