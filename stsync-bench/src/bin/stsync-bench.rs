//! `stsync-bench`: the fan-out sweep across network namespaces, and helpers.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "stsync-proxy fan-out benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sweep in network namespaces (root): both datapaths, viewers and bitrates,
    /// plus a raw UDP baseline; writes results.json, table.md and plot.svg.
    Sweep(stsync_bench::sweep::SweepOpts),
    /// Redraw table.md and plot.svg from an existing results.json.
    Replot {
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Count a process's system calls for a while (as the sweep does for the relay) and
    /// print them as JSON.
    Syscalls {
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value_t = stsync_bench::syscalls::Method::Bpf)]
        method: stsync_bench::syscalls::Method,
        /// The bench eBPF object (method bpf).
        #[arg(long)]
        object: Option<PathBuf>,
    },
    /// Soak the relay on loopback: one publisher, honest viewers, churn, garbage, spoofed
    /// control packets, NAK storms and a handshake flood for --minutes; samples its RSS,
    /// CPU, file descriptors, connections and the honest viewers' delivery every
    /// --sample-secs into samples.csv/json and soak.svg. Fails if the relay dies.
    Soak(stsync_bench::soak::SoakOpts),
    /// Redraw a soak's soak.svg from its samples.json.
    SoakReplot {
        #[arg(long, default_value = "target/soak")]
        out: PathBuf,
    },
    /// Compare what another viewer wrote (srt-live-transmit ... file://con > FILE) with a
    /// stsync-loadgen run's JSON report: same packets, byte for byte.
    CheckDump {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        report: PathBuf,
        #[arg(long, default_value_t = 1316)]
        payload: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Sweep(o) => {
            let r = stsync_bench::sweep::run(&o)?;
            print!("{}", stsync_bench::sweep::table(&r));
            eprintln!("bench: results in {}", o.out.display());
            Ok(())
        }
        Cmd::Replot { out } => {
            let r: stsync_bench::sweep::SweepResults =
                serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
            std::fs::write(out.join("table.md"), stsync_bench::sweep::table(&r))?;
            stsync_bench::plot::draw(&r, &out.join("plot.svg"))?;
            print!("{}", stsync_bench::sweep::table(&r));
            Ok(())
        }
        Cmd::Soak(o) => match stsync_bench::soak::run(&o) {
            Ok(stsync_bench::soak::Ending::Completed) => Ok(()),
            Ok(stsync_bench::soak::Ending::Interrupted) => std::process::exit(130),
            Err(e) => {
                // The reason (e.g. the relay's exit and its last log lines), without a
                // backtrace of this tool, which says nothing about it.
                eprintln!("soak failed: {e:#}");
                std::process::exit(1)
            }
        },
        Cmd::SoakReplot { out } => stsync_bench::soak::replot(&out),
        Cmd::Syscalls {
            pid,
            seconds,
            method,
            object,
        } => {
            let object = object.unwrap_or_else(stsync_bench::sink::default_object_path);
            let mut c = stsync_bench::syscalls::Counter::start(method, pid, &object)?;
            c.enable()?;
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
            c.disable()?;
            println!("{}", serde_json::to_string_pretty(&c.finish()?)?);
            Ok(())
        }
        Cmd::CheckDump {
            file,
            report,
            payload,
        } => {
            let r: stsync_bench::report::Report =
                serde_json::from_str(&std::fs::read_to_string(&report)?)?;
            let c = stsync_bench::dump::check(&file, payload, &r)?;
            println!("{}", serde_json::to_string_pretty(&c)?);
            let ok = c.intact == c.packets
                && c.window_received == c.window_expected
                && c.window_duplicates == 0;
            if !ok {
                anyhow::bail!("the dump does not hold the whole window intact");
            }
            Ok(())
        }
    }
}
