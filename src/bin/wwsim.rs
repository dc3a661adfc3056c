//! `wwsim`: simulated nodes booting against real heads. See `wulfpack::sim` and
//! docs/OPERATIONS.md "wwsim".
use anyhow::Context;
use clap::Parser;
use wulfpack::sim::{Args, SimOptions};

fn main() {
    if let Err(e) = run() {
        eprintln!("wwsim: ERROR: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    // Text on stderr; levels from WWSIM_LOG (RUST_LOG syntax).
    wulfpack::logging::init(
        wulfpack::logging::LogFormat::Text,
        "WWSIM_LOG",
        wulfpack::logging::Defaults {
            directives: "warn".into(),
            drop: None,
        },
    );
    let opts = SimOptions::try_from(Args::parse())?;
    let json = opts.json.clone();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = rt.block_on(wulfpack::sim::run(opts))?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", report.summary.line());
    if report.summary.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
