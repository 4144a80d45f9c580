//! Workflow commands: `cargo xtask run`, `cargo xtask test`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the relay (release) and run it; arguments after `--` go to stsync-proxy.
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install what the tests need (when root on Debian) and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Debian packages the integration tests drive: real SRT clients, pacing, loss, namespaces.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("ffmpeg", "ffmpeg"),
    ("srt-live-transmit", "srt-tools"),
    ("pv", "pv"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("capsh", "libcap2-bin"),
];

fn main() -> Result<()> {
    let root = project_root();
    match Cli::parse().cmd {
        Cmd::Run { args } => {
            cargo(&root, &["build", "--release", "-p", "stsync-user", "--bin", "stsync-proxy"])?;
            let mut cmd = Command::new(root.join("target/release/stsync-proxy"));
            if !args.iter().any(|a| a == "--config" || a.starts_with("--config=")) {
                cmd.arg("--config").arg(root.join("config.json"));
            }
            let status = cmd.args(&args).status().context("starting stsync-proxy")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => {
            install_test_packages()?;
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(&root).args(["test", "--workspace"]);
            if std::env::var_os("CI").is_some() {
                // On CI (root, a BPF-capable kernel) a skipped privileged test is a failure.
                cmd.env("STSYNC_REQUIRE_PRIVILEGED", "1");
            }
            cmd.arg("--").args(&args);
            let status = cmd.status()?;
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO")).current_dir(root).args(args).status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd} >/dev/null")]).status().is_ok_and(|s| s.success())
}

fn install_test_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    if !is_root || !have("apt-get") {
        bail!("the tests need these Debian packages: {} (install them as root: apt-get install -y {})", missing.join(" "), missing.join(" "));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let ok = Command::new("apt-get").arg("update").arg("-qq").status()?.success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}
