//! Workflow commands: `cargo xtask run`, `cargo xtask test`, `cargo xtask build-ebpf`,
//! `cargo xtask bench`, `cargo xtask fuzz`, `cargo xtask k8s-validator`.

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
    /// Build the kernel programs with nightly + bpf-linker: the fast path (stsync-ebpf) and
    /// the benchmark's viewer sink (stsync-bench-ebpf), into
    /// target/bpfel-unknown-none/release/.
    BuildEbpf,
    /// Install what the tests need (when root on Debian) and run the whole test suite.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install the pinned offline validator of deploy/k8s (a Python venv under the target
    /// directory; `test` does it first) and print its python, for running
    /// `cargo test --test k8s_manifests` alone.
    K8sValidator,
    /// Build release binaries and run the fan-out sweep (root: network namespaces); results
    /// in target/bench. Arguments after `--` go to `stsync-bench sweep`.
    Bench {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Fuzz the protocol core (cargo-fuzz, nightly; installed when missing): each target for
    /// --secs seconds, one after another, from the seed corpus plus what earlier runs found
    /// (fuzz/target/corpus); fails when any finds a crash (saved under fuzz/artifacts).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        secs: u64,
        /// Targets to run (default: all of them).
        targets: Vec<String>,
    },
    /// Rebuild the fuzz seed corpus (fuzz/corpus) from pcap captures of real SRT traffic
    /// through the relay (fuzz/capture.sh makes them).
    FuzzCorpus {
        /// The relay's UDP port in the captures.
        #[arg(long, default_value_t = 9999)]
        relay_port: u16,
        #[arg(required = true)]
        pcaps: Vec<PathBuf>,
    },
}

/// Debian packages the integration tests drive: real SRT clients (srt-live-transmit,
/// ffmpeg/ffplay, VLC, GStreamer, OBS Studio), pacing, loss, namespaces, and curl against
/// the HTTPS API.
const TEST_PACKAGES: &[&str] = &[
    "curl",
    "ffmpeg",
    "srt-tools",
    "pv",
    "nftables",
    "iproute2",
    "libcap2-bin",
    "vlc-bin",
    "vlc-plugin-base",
    "vlc-plugin-access-extra",
    "gstreamer1.0-tools",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-bad",
    // OBS Studio as a publisher, headless (tests/obs_e2e.rs): Xvfb, and Mesa's software GL.
    "obs-studio",
    "xvfb",
    "xauth",
    "libgl1-mesa-dri",
    // promtool and a real Prometheus server (tests/prometheus.rs, deploy/prometheus); the
    // package's service is not started here (no init, policy-rc.d) and the test uses its own port.
    "prometheus",
    // tests/systemd_unit.rs: systemd-analyze verify/security, setpriv.
    "systemd",
    "util-linux",
];

fn main() -> Result<()> {
    let root = project_root();
    match Cli::parse().cmd {
        Cmd::BuildEbpf => build_ebpf(&root, ALL_EBPF),
        Cmd::K8sValidator => {
            println!("{}", install_k8s_validator(&root)?.display());
            Ok(())
        }
        Cmd::Fuzz { secs, targets } => fuzz(&root, secs, &targets),
        Cmd::FuzzCorpus { relay_port, pcaps } => {
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(&root)
                .args([
                    "run",
                    "-q",
                    "-p",
                    "stsync-user",
                    "--example",
                    "fuzz_corpus",
                    "--",
                ])
                .args([
                    "--out",
                    "fuzz/corpus",
                    "--relay-port",
                    &relay_port.to_string(),
                ])
                .args(&pcaps);
            if !cmd.status()?.success() {
                bail!("fuzz_corpus failed");
            }
            Ok(())
        }
        Cmd::Bench { args } => {
            build_ebpf_if_possible(
                &root,
                ALL_EBPF,
                "the ebpf datapath will be recorded as unavailable and the generator needs --rx socket",
            )?;
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "stsync-user",
                    "-p",
                    "stsync-bench",
                ],
            )?;
            let mut cmd = Command::new(target_dir(&root).join("release/stsync-bench"));
            cmd.current_dir(&root).arg("sweep");
            if !args.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
                cmd.args(["--out", "target/bench"]);
            }
            let status = cmd.args(&args).status().context("starting stsync-bench")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Run { args } => {
            build_ebpf_if_possible(
                &root,
                RELAY_EBPF,
                "running without the kernel fast path (datapath=userspace)",
            )?;
            cargo(
                &root,
                &[
                    "build",
                    "--release",
                    "-p",
                    "stsync-user",
                    "--bin",
                    "stsync-proxy",
                ],
            )?;
            let mut cmd = Command::new(target_dir(&root).join("release/stsync-proxy"));
            if !args
                .iter()
                .any(|a| a == "--config" || a.starts_with("--config="))
            {
                cmd.arg("--config").arg(root.join("config.json"));
            }
            let status = cmd.args(&args).status().context("starting stsync-proxy")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { args } => {
            install_test_packages()?;
            // The Kubernetes manifests' offline validator (a Python venv); without it
            // k8s_manifests fails and says why.
            let k8s_python = install_k8s_validator(&root)
                .map_err(|e| eprintln!("xtask: {e:#}"))
                .ok();
            // The eBPF tests load the object: install its toolchain when we can (root on
            // Debian, as on CI); otherwise they skip, which fails under CI.
            if let Err(e) = install_ebpf_toolchain() {
                eprintln!("xtask: {e:#}");
            }
            build_ebpf_if_possible(&root, ALL_EBPF, "the eBPF tests will be skipped")?;
            let mut cmd = Command::new(env!("CARGO"));
            // Every test binary runs even when one fails, so one run shows every failure.
            cmd.current_dir(&root)
                .args(["test", "--workspace", "--no-fail-fast"]);
            if std::env::var_os("CI").is_some() {
                // On CI (root, a BPF-capable kernel) a skipped privileged test is a failure.
                cmd.env("STSYNC_REQUIRE_PRIVILEGED", "1");
            }
            if let Some(python) = k8s_python {
                cmd.env("STSYNC_K8S_PYTHON", python);
            }
            cmd.arg("--").args(&args);
            let (status, totals) = run_counting(cmd)?;
            // One closing line for the whole suite (cargo's last lines are per-crate doc
            // tests, often "0 passed").
            println!(
                "{} passed, {} failed, {} ignored",
                totals[0], totals[1], totals[2]
            );
            if !status.success() {
                bail!("tests failed");
            }
            Ok(())
        }
    }
}

/// Runs `cargo test`, echoing its output, and sums its "test result:" lines into
/// [passed, failed, ignored].
fn run_counting(mut cmd: Command) -> Result<(std::process::ExitStatus, [u64; 3])> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut totals = [0u64; 3];
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let slot = match what {
                        "passed" => 0,
                        "failed" => 1,
                        "ignored" => 2,
                        _ => continue,
                    };
                    totals[slot] += n.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok((child.wait()?, totals))
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(args)
        .status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

const EBPF_TOOLCHAIN_HELP: &str = "rustup toolchain install nightly --component rust-src && apt-get install -y llvm-22-dev libpolly-22-dev && LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22 (or run .ci/run)";

/// What is missing to build the eBPF object, if anything.
fn ebpf_toolchain_missing() -> Option<&'static str> {
    let nightly_src = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .map(|sysroot| sysroot.join("lib/rustlib/src/rust/library/core").is_dir());
    match nightly_src {
        None => Some("no nightly Rust toolchain"),
        Some(false) => Some("nightly has no rust-src component"),
        Some(true) if !have("bpf-linker") => Some("bpf-linker is not installed"),
        Some(true) => None,
    }
}

/// Where cargo builds: $CARGO_TARGET_DIR (relative to the workspace if it is relative), or
/// the workspace's target/. The kernel programs go there too, so the binaries built beside
/// them find them.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"))
}

/// The relay's kernel fast path.
const RELAY_EBPF: &[&str] = &["stsync-ebpf"];
/// Every kernel program: the fast path and the benchmark generator's viewer sink.
const ALL_EBPF: &[&str] = &["stsync-ebpf", "stsync-bench-ebpf"];

/// Builds the eBPF objects of `crates` when their toolchain is there; otherwise says what
/// is missing, what that means (`consequence`) and how to install it.
fn build_ebpf_if_possible(root: &Path, crates: &[&str], consequence: &str) -> Result<()> {
    match ebpf_toolchain_missing() {
        None => build_ebpf(root, crates),
        Some(what) => {
            eprintln!("xtask: {what}: {consequence}; install it with: {EBPF_TOOLCHAIN_HELP}");
            Ok(())
        }
    }
}

/// `cargo +nightly build -Z build-std=core --target bpfel-unknown-none --release` in each
/// of `crates` (their .cargo/config.toml asks bpf-linker for BTF); the objects land in the
/// workspace's target directory, target/bpfel-unknown-none/release/<crate>.
fn build_ebpf(root: &Path, crates: &[&str]) -> Result<()> {
    for krate in crates {
        build_one_ebpf(root, krate)?;
    }
    Ok(())
}

fn build_one_ebpf(root: &Path, krate: &str) -> Result<()> {
    let status = cargo_nightly(&root.join(krate))
        .args([
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
        ])
        .arg("--target-dir")
        .arg(target_dir(root))
        .status()
        .context("running cargo +nightly")?;
    if !status.success() {
        bail!("building {krate} failed");
    }
    Ok(())
}

/// Whether Debian package `pkg` is installed.
fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.ends_with(b"install ok installed"))
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() || !have("apt-get") {
        bail!(
            "these Debian packages are needed: {0} (install them as root: apt-get install -y {0})",
            packages.join(" ")
        );
    }
    eprintln!("xtask: installing {}", packages.join(" "));
    let ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()?
        .success()
        && Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    if !ok {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

fn install_test_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// The pinned Python packages that validate deploy/k8s offline (kubernetes-validate and
/// jsonschema, stsync-user/tests/k8s/requirements.txt), in a venv under the target
/// directory; Debian's python3-venv is installed first when `python3 -m venv` cannot make
/// one (Debian's own pip refuses to install into the system, PEP 668). Done once per
/// requirements file: the venv keeps a copy of the one it was made from. Returns the venv's
/// python.
fn install_k8s_validator(root: &Path) -> Result<PathBuf> {
    let requirements = root.join("stsync-user/tests/k8s/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let target = target_dir(root);
    let venv = target.join("k8s-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("requirements.txt");
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(&target)?;
    let make_venv = || {
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !make_venv() {
        let _ = std::fs::remove_dir_all(&venv);
        eprintln!("xtask: python3 -m venv failed; installing Debian's python3 and python3-venv");
        apt_install(&["python3", "python3-venv"])?;
        if !make_venv() {
            bail!("python3 -m venv {} failed", venv.display());
        }
    }
    eprintln!(
        "xtask: installing the Kubernetes manifest validator into {}",
        venv.display()
    );
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .context("running pip")?
        .success();
    if !ok {
        bail!("pip install -r {} failed", requirements.display());
    }
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// nightly + rust-src, Debian's LLVM 22 and a bpf-linker built against it; each step is
/// skipped when already done.
fn install_ebpf_toolchain() -> Result<()> {
    match ebpf_toolchain_missing() {
        None => return Ok(()),
        Some(what) if !is_root() => bail!("{what}, and not root to install it"),
        Some(_) => {}
    }
    let rustup = |args: &[&str]| -> Result<()> {
        let ok = Command::new("rustup")
            .args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .context("running rustup")?
            .success();
        if !ok {
            bail!("rustup {} failed", args.join(" "));
        }
        Ok(())
    };
    match ebpf_toolchain_missing() {
        // Installing would also update an existing nightly: only add what is missing.
        Some("no nightly Rust toolchain") => rustup(&[
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])?,
        Some("nightly has no rust-src component") => {
            rustup(&["component", "add", "rust-src", "--toolchain", "nightly"])?
        }
        _ => {}
    }
    if !have("bpf-linker") {
        let dev = ["llvm-22-dev", "libpolly-22-dev"];
        let installed = Command::new("dpkg")
            .arg("-s")
            .args(dev)
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            apt_install(&dev)?;
        }
        // llvm-sys finds Debian's LLVM 22 (under /usr/lib/llvm-22) through this prefix.
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let ok = Command::new(env!("CARGO"))
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path)
            .status()?
            .success();
        if !ok {
            bail!("cargo install bpf-linker failed");
        }
    }
    Ok(())
}

/// The fuzz targets (fuzz/fuzz_targets) and the largest input each is given: a datagram
/// and a bit for the codec targets, a few hundred operations for the stateful ones (the
/// relay seeds from captures are up to ~8 KB).
const FUZZ_TARGETS: &[(&str, usize)] = &[
    ("packet", 2048),
    ("handshake", 2048),
    ("streamid", 1024),
    ("receiver", 4096),
    ("relay", 16384),
    ("pull", 8192),
];

/// A toolchain-neutral `cargo +nightly` (whatever runs xtask must not leak into it).
fn cargo_nightly(dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).arg("+nightly");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// nightly and cargo-fuzz, installed when missing.
fn install_fuzz_tools(root: &Path) -> Result<()> {
    let nightly = cargo_nightly(root)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: installing the nightly toolchain (cargo fuzz needs it)");
        let ok = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .context("running rustup")?
            .success();
        if !ok {
            bail!("rustup toolchain install nightly failed");
        }
    }
    if !have("cargo-fuzz") {
        eprintln!("xtask: installing cargo-fuzz");
        let ok = Command::new(env!("CARGO"))
            .args(["install", "cargo-fuzz", "--locked"])
            .status()?
            .success();
        if !ok {
            bail!("cargo install cargo-fuzz --locked failed");
        }
    }
    Ok(())
}

/// Files under `dir` (none if it does not exist).
fn files_in(dir: &Path) -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// `cargo xtask fuzz`: builds every target once, runs each for `secs` seconds and reports
/// runs, coverage and new crash artifacts per target.
fn fuzz(root: &Path, secs: u64, only: &[String]) -> Result<()> {
    let targets: Vec<(&str, usize)> = FUZZ_TARGETS
        .iter()
        .copied()
        .filter(|(t, _)| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if let Some(bad) = only
        .iter()
        .find(|o| !FUZZ_TARGETS.iter().any(|(t, _)| t == o))
    {
        let names: Vec<&str> = FUZZ_TARGETS.iter().map(|(t, _)| *t).collect();
        bail!("no fuzz target {bad:?} (targets: {})", names.join(", "));
    }
    install_fuzz_tools(root)?;
    let fuzz_dir = root.join("fuzz");
    // Plain Rust (no unsafe in what the targets reach): no sanitizer, about twice the
    // executions per second of ASan. Debug assertions and overflow checks stay on.
    let sanitizer = ["--sanitizer", "none"];
    let started = std::time::Instant::now();
    let ok = cargo_nightly(root)
        .args(["fuzz", "build"])
        .args(sanitizer)
        .status()
        .context("running cargo +nightly fuzz build")?
        .success();
    if !ok {
        bail!("cargo +nightly fuzz build failed");
    }
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (target, max_len) in targets {
        let artifacts = fuzz_dir.join("artifacts").join(target);
        let before = files_in(&artifacts);
        // New inputs go to fuzz/target/corpus/<target> (kept between local runs, ignored by
        // git); fuzz/corpus/<target> is the committed seed corpus, only read.
        let work = fuzz_dir.join("target/corpus").join(target);
        std::fs::create_dir_all(&work)?;
        let log_path = fuzz_dir.join("target").join(format!("{target}.log"));
        let log = std::fs::File::create(&log_path)?;
        eprintln!(
            "xtask: fuzzing {target} for {secs} s (log: {})",
            log_path.display()
        );
        let status = cargo_nightly(root)
            .args(["fuzz", "run"])
            .args(sanitizer)
            .arg(target)
            .arg(&work)
            .arg(fuzz_dir.join("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-max_len={max_len}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=25")
            .arg("-print_final_stats=1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running cargo +nightly fuzz run")?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_prefix(':'))
                .map_or("?".to_string(), |v| v.trim().to_string())
        };
        let new: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
        let line = format!(
            "{target:<10} {:>12} runs  cov {:>5}  corpus {:>5}  {}",
            stat("stat::number_of_executed_units"),
            text.lines()
                .rev()
                .find_map(|l| l.split(" cov: ").nth(1)?.split_whitespace().next())
                .unwrap_or("?"),
            text.lines()
                .rev()
                .find_map(|l| l.split(" corp: ").nth(1)?.split('/').next())
                .unwrap_or("?"),
            if status.success() && new.is_empty() {
                "ok".to_string()
            } else {
                format!("FAILED ({status})")
            }
        );
        if !status.success() || !new.is_empty() {
            // The panic message (or libFuzzer's verdict: timeout, out of memory), for the
            // CI log; the whole story is in the log file.
            let lines: Vec<&str> = text.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.contains("panicked at"))
                .or_else(|| lines.iter().position(|l| l.contains("ERROR: libFuzzer")))
                .unwrap_or(lines.len().saturating_sub(5));
            for l in lines.iter().skip(at).take(4) {
                eprintln!("  | {l}");
            }
            failed.push((target, new));
        }
        report.push(line);
    }
    println!("fuzzed {secs} s per target:");
    for l in &report {
        println!("  {l}");
    }
    if failed.is_empty() {
        return Ok(());
    }
    for (target, files) in &failed {
        for f in files {
            let f = f.strip_prefix(root).unwrap_or(f).display();
            println!("NEW CRASH {target}: {f}");
            println!("  reproduce: cargo +nightly fuzz run -s none {target} {f}");
            println!("  minimise:  cargo +nightly fuzz tmin -s none {target} {f}");
        }
    }
    println!(
        "then fix the cause and add the minimised input to fuzz/regressions/<target>/ (replayed by stsync-user/tests/fuzz_regressions.rs)"
    );
    bail!(
        "fuzzing found crashes in: {}",
        failed
            .iter()
            .map(|(t, _)| *t)
            .collect::<Vec<_>>()
            .join(", ")
    )
}
