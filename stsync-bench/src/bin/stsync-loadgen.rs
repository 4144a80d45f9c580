//! `stsync-loadgen`: publish a paced SRT stream and receive it with N viewers, then print
//! delivery, transit latency and CPU (a table, and JSON with --json).

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "SRT load generator: one publisher, N viewers, one process"
)]
struct Cli {
    #[command(flatten)]
    opts: stsync_bench::loadgen::Opts,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = stsync_bench::loadgen::run(&cli.opts)?;
    if !cli.opts.quiet {
        report.print();
    }
    if let Some(path) = &cli.opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
