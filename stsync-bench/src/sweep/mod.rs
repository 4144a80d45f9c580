//! The sweep: three network namespaces joined by two veth pairs (publisher — relay —
//! viewers), the relay started per point with each datapath, stsync-loadgen driving it, and
//! a raw UDP sendmmsg baseline over the same relay→viewers veth.
//!
//! ```text
//!  stsb-pub                stsb-relay                       stsb-view
//!  10.88.1.2 [stsb-p0]──[stsb-p1] 10.88.1.1   10.88.2.1 [stsb-v1]──[stsb-v0] 10.88.2.2
//!                                                                   + local 10.88.128.0/20
//! ```
//! Viewers use source addresses from 10.88.128.0/20 (an AnyIP `local` route in stsb-view,
//! routed via 10.88.2.2 from the relay), one per viewer.
//!
//! `--topology tree`: an origin and two edges pulling the stream from it (config.json
//! `upstream`, `"pull": "always"`, one `key_secret` so that the keys the generator mints at
//! the origin work at the edges), all three with the point's datapath and workers; the
//! viewers' namespace is linked to both edges, the first half of the viewers calls edge 0,
//! the others edge 1 (the kernel sink listens on both links).
//!
//! ```text
//!                                  10.88.4.1 [stsb-o0]──[stsb-e0] 10.88.4.2  stsb-edge0
//!  stsb-pub                stsb-origin                        10.88.2.1 [stsb-v1]──[stsb-v0] 10.88.2.2
//!  10.88.1.2 [stsb-p0]──[stsb-p1] 10.88.1.1                                           stsb-view
//!                                  10.88.5.1 [stsb-o1]──[stsb-e1] 10.88.5.2  stsb-edge1
//!                                                             10.88.3.1 [stsb-w1]──[stsb-w0] 10.88.3.2
//! ```
//!
//! `--family ipv6`: the same hosts over IPv6 (fd88::/16; see `family`): the relays listen on
//! `[::]`, the publisher and the viewers call them over IPv6, viewers from fd88:128::1 up.
//!
//! Files: `topology` (the namespaces), `family` (each family's addresses), `relay` (the
//! relay under test and its snapshot),
//! `point` (one point: relay + stsync-loadgen), `baseline` (raw UDP), `results` (what is
//! kept), `table` (table.md).

mod baseline;
mod family;
mod point;
mod relay;
mod results;
mod table;
mod topology;
mod tree;

pub use baseline::baseline;
pub use family::Family;
pub(crate) use relay::{exe_sibling, fingerprint, RelayProc};
pub use results::{machine, Baseline, Machine, MaxViewers, Point, SweepResults};
pub use table::table;
pub use topology::{Topology, TopologyKind};

use anyhow::{bail, Context, Result};
use clap::Args;
use point::run_point;
use relay::Snapshot;
use std::path::PathBuf;
use stsync_user::os::proc::loadavg;

pub const NS_PUB: &str = "stsb-pub";
pub const NS_RELAY: &str = "stsb-relay";
pub const NS_VIEW: &str = "stsb-view";
pub const NS_ORIGIN: &str = "stsb-origin";
pub const NS_EDGE0: &str = "stsb-edge0";
pub const NS_EDGE1: &str = "stsb-edge1";
/// The tree's relays' config.json `key_secret` (a session key minted at one works at all).
const KEY_SECRET: &str = "5e1f0c9a7b3d48e2a6c4f1b09d8e7a3c2b5f6e4d1a0c9b8e";
/// The veth end in stsb-view where edge 1's packets arrive (edge 0's: VIEW_IFACE).
const VIEW_IFACE_B: &str = "stsb-w0";
const TOKEN: &str = "stsync-bench-token-7f3a9c";
/// The veth end in stsb-view where the relay's packets to the viewers arrive.
const VIEW_IFACE: &str = "stsb-v0";

#[derive(Args, Debug, Clone)]
pub struct SweepOpts {
    /// Output directory (results.json, table.md, plot.svg, per-point reports and relay logs).
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The relay binary (default: stsync-proxy next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The generator binary (default: stsync-loadgen next to this executable).
    #[arg(long)]
    pub loadgen_bin: Option<PathBuf>,
    /// Datapaths to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "ebpf,userspace")]
    pub datapaths: Vec<String>,
    /// Viewer counts of the viewer sweep (at --base-bitrate).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,500,1000")]
    pub viewers: Vec<u32>,
    #[arg(long, default_value = "4M", value_parser = crate::loadgen::parse_rate)]
    pub base_bitrate: u64,
    /// Bitrates of the bitrate sweep (at --bitrate-viewers).
    #[arg(long, value_delimiter = ',', default_value = "1M,4M,8M,16M", value_parser = crate::loadgen::parse_rate)]
    pub bitrates: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    pub bitrate_viewers: u32,
    /// Seconds of warm-up and of measurement per point.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Seconds of the raw UDP baseline.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Passed to the relay as --ebpf-object.
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// How the generator's viewers receive data: `xdp` (the kernel sink stsync-bench-ebpf
    /// records and drops data packets in stsb-view; the generator reads its rings) or
    /// `socket` (recvmmsg, as a plain UDP receiver).
    #[arg(long, value_enum, default_value_t = crate::loadgen::RxMode::Xdp)]
    pub rx: crate::loadgen::RxMode,
    /// Hook of the kernel sink (--rx xdp).
    #[arg(long, value_enum, default_value_t = crate::sink::Attach::Tc)]
    pub sink_attach: crate::sink::Attach,
    /// The kernel sink's object (default: next to the generator's build directory).
    #[arg(long)]
    pub sink_object: Option<PathBuf>,
    /// Do not count the relay's system calls in each window.
    #[arg(long)]
    pub no_syscalls: bool,
    /// How to count them: a raw tracepoint program (bpf) or perf stat.
    #[arg(long, value_enum, default_value_t = crate::syscalls::Method::Bpf)]
    pub syscall_counter: crate::syscalls::Method,
    /// On a shared machine: before each point, wait until the whole machine has been below
    /// this busy % (of one core) for 3 s in a row, for at most --quiet-max-wait seconds.
    #[arg(long)]
    pub wait_quiet: Option<f64>,
    #[arg(long, default_value_t = 600.0)]
    pub quiet_max_wait: f64,
    /// Encryption of each point, in order (every point is run once per entry, one after
    /// the other): `clear`; `aes128`, `aes192`, `aes256` (publisher and viewers encrypt,
    /// each connection with its own key); `pub-aes128`... (only the publisher: clear
    /// viewers of an encrypted stream); `view-aes128`... (only the viewers). The relay's
    /// stream gets the passphrases and `pbkeylen` that asks for.
    #[arg(long, value_delimiter = ',', default_value = "clear", value_parser = Encryption::parse)]
    pub crypto: Vec<Encryption>,
    /// Worker threads of the relay (its --workers), each entry a run of every point, one
    /// after the other (as --crypto). Default: the flag is not passed (the relay's own).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Vec<u32>,
    /// Run the whole plan this many times, round after round (for the spread on a shared
    /// machine).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Instead of the viewer and bitrate sweeps: for each datapath, --crypto and --workers
    /// entry, the most viewers (between LO and HI, at --base-bitrate) for which a point holds, by
    /// bisection down to --find-max-step viewers.
    #[arg(long, value_delimiter = ',', value_name = "LO,HI")]
    pub find_max: Option<Vec<u32>>,
    #[arg(long, default_value_t = 50)]
    pub find_max_step: u32,
    /// Relays of each point, each entry a run of every point, one after the other (as
    /// --crypto): `single` (publisher → relay → viewers) or `tree` (publisher → origin →
    /// two edges; --viewers counts all of them, half behind each edge; clear only).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "single")]
    pub topology: Vec<TopologyKind>,
    /// Address family of each point, each entry a run of every point, one after the other
    /// (as --crypto): `ipv4`, or `ipv6` (the relays listen on [::], the publisher and the
    /// viewers call them over IPv6; the namespaces carry both families).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ipv4")]
    pub family: Vec<Family>,
}

/// Passphrases of the sweep's encrypted points (the relay's config and the generator's).
pub const PUBLISH_PASSPHRASE: &str = "stsync-bench-publish-secret";
pub const VIEW_PASSPHRASE: &str = "stsync-bench-view-secret";

/// Who encrypts at a point, and with what key length (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Encryption {
    pub publish: Option<usize>,
    pub view: Option<usize>,
}

impl Encryption {
    pub fn parse(s: &str) -> Result<Encryption, String> {
        if s == "clear" {
            return Ok(Encryption::default());
        }
        let (who, aes) = match s.split_once('-') {
            Some((who, aes)) => (who, aes),
            None => ("both", s),
        };
        let len = match aes {
            "aes128" => 16,
            "aes192" => 24,
            "aes256" => 32,
            _ => return Err(format!("{s}: not clear, aesNNN, pub-aesNNN or view-aesNNN")),
        };
        match who {
            "both" => Ok(Encryption {
                publish: Some(len),
                view: Some(len),
            }),
            "pub" => Ok(Encryption {
                publish: Some(len),
                view: None,
            }),
            "view" => Ok(Encryption {
                publish: None,
                view: Some(len),
            }),
            _ => Err(format!("{s}: not clear, aesNNN, pub-aesNNN or view-aesNNN")),
        }
    }

    /// As `parse` reads it.
    pub fn name(&self) -> String {
        let aes = |l: usize| format!("aes{}", l * 8);
        match (self.publish, self.view) {
            (None, None) => "clear".into(),
            (Some(a), Some(b)) if a == b => aes(a),
            (Some(a), None) => format!("pub-{}", aes(a)),
            (None, Some(b)) => format!("view-{}", aes(b)),
            (Some(a), Some(b)) => format!("pub-{}+view-{}", aes(a), aes(b)),
        }
    }

    /// The key length the stream's config asks for (`pbkeylen`).
    pub(crate) fn key_len(&self) -> Option<usize> {
        self.publish.or(self.view)
    }
}

pub fn run(o: &SweepOpts) -> Result<SweepResults> {
    std::fs::create_dir_all(&o.out)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the sweep needs root (network namespaces, veth)");
    }
    let snap = Snapshot::take(o)?;
    let o = &SweepOpts {
        relay_bin: Some(snap.relay_bin.clone()),
        ebpf_object: snap.ebpf_object.clone(),
        ..o.clone()
    };
    let first = o.topology.first().copied().unwrap_or_default();
    // Deletes the namespaces of either topology at the end, also on error.
    let _topo = Topology::create(first).context("creating the namespaces")?;
    let mut res = SweepResults {
        machine: machine(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        warmup_s: o.warmup,
        duration_s: o.duration,
        datapath_errors: Vec::new(),
        relay_bin: snap.relay_desc.clone(),
        ebpf_object: snap.ebpf_desc.clone(),
        rx: o.rx.name().into(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        baseline: None,
        points: Vec::new(),
        max_viewers: Vec::new(),
    };
    let baseline_from = match first {
        TopologyKind::Single => NS_RELAY,
        TopologyKind::Tree => NS_EDGE0,
    };
    match baseline(o.baseline_secs, 1316, baseline_from) {
        Ok(b) => {
            eprintln!(
                "bench: raw UDP baseline: {:.0} datagrams/s sent, {:.0} received, {:.0} ns busy CPU each",
                b.sent_pps, b.received_pps, b.busy_ns_per_packet
            );
            res.baseline = Some(b);
        }
        Err(e) => eprintln!("bench: raw UDP baseline failed: {e:#}"),
    }
    match &o.find_max {
        Some(range) => {
            let &[lo, hi] = range.as_slice() else {
                bail!("--find-max takes LO,HI");
            };
            if lo == 0 || lo >= hi {
                bail!("--find-max: LO must be at least 1 and below HI");
            }
            for kind in &o.datapaths {
                for &enc in &o.crypto {
                    for workers in worker_counts(o) {
                        for &topo in &o.topology {
                            for &fam in &o.family {
                                let m = find_max(
                                    o,
                                    kind,
                                    enc,
                                    workers,
                                    (topo, fam),
                                    (lo, hi),
                                    &mut res,
                                )?;
                                res.max_viewers.push(m);
                            }
                        }
                    }
                }
            }
        }
        None => {
            let plan = plan(o);
            for _ in 0..o.repeat.max(1) {
                for kind in &o.datapaths {
                    run_datapath(o, kind, &plan, &mut res)?;
                }
            }
        }
    }
    res.loadavg_end = loadavg();
    write_results(o, &res)?;
    std::fs::write(o.out.join("table.md"), table(&res))?;
    crate::plot::draw(&res, &o.out.join("plot.svg"))?;
    Ok(res)
}

/// Every point of `plan` with datapath `kind`, into `res` (and results.json); none after
/// the first if the relay cannot run that datapath at all.
fn run_datapath(
    o: &SweepOpts,
    kind: &str,
    plan: &[(u32, u64)],
    res: &mut SweepResults,
) -> Result<()> {
    if res.datapath_errors.iter().any(|(k, _)| k == kind) {
        return Ok(());
    }
    for &(viewers, bitrate) in plan {
        for &enc in &o.crypto {
            for workers in worker_counts(o) {
                for &topo in &o.topology {
                    for &fam in &o.family {
                        if !measure(o, kind, viewers, bitrate, enc, workers, (topo, fam), res)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The relay's --workers at each point: every --workers entry, or once without the flag.
fn worker_counts(o: &SweepOpts) -> Vec<Option<u32>> {
    if o.workers.is_empty() {
        return vec![None];
    }
    o.workers.iter().copied().map(Some).collect()
}

/// ", N workers" for the progress lines (empty without --workers).
fn workers_note(workers: Option<u32>) -> String {
    workers.map_or(String::new(), |w| format!(", {w} workers"))
}

/// ", tree" and ", IPv6" for the progress lines (empty for the single relay over IPv4).
fn topology_note((topo, fam): (TopologyKind, Family)) -> String {
    let mut s = match topo {
        TopologyKind::Single => String::new(),
        TopologyKind::Tree => ", tree (origin → 2 edges)".into(),
    };
    if fam == Family::Ipv6 {
        s += ", IPv6";
    }
    s
}

/// One point into `res` (and results.json); false if the relay cannot run datapath
/// `kind` at all (recorded in `res.datapath_errors`).
#[allow(clippy::too_many_arguments)]
fn measure(
    o: &SweepOpts,
    kind: &str,
    viewers: u32,
    bitrate: u64,
    enc: Encryption,
    workers: Option<u32>,
    topo: (TopologyKind, Family),
    res: &mut SweepResults,
) -> Result<bool> {
    eprintln!(
        "bench: {kind}: {viewers} viewers at {:.1} Mbit/s, {}{}{}",
        bitrate as f64 / 1e6,
        enc.name(),
        workers_note(workers),
        topology_note(topo)
    );
    let first = !res.points.iter().any(|p| p.datapath == kind);
    match run_point(o, kind, viewers, bitrate, enc, workers, topo) {
        Ok(p) => {
            eprintln!(
                "bench:   holds {}: on time min {:.4}, relay {:.1} % + softirq {:.1} %, p99 {:.0} µs",
                p.holds(), p.on_time_min.unwrap_or(0.0), p.relay_pct, p.softirq_pct, p.latency_p99_us
            );
            res.points.push(p);
        }
        Err(e) if first && e.to_string().contains("relay --datapath") => {
            eprintln!("bench: datapath {kind} unavailable: {e:#}");
            res.datapath_errors
                .push((kind.to_string(), format!("{e:#}")));
            return Ok(false);
        }
        Err(e) => {
            eprintln!("bench:   failed: {e:#}");
            let mut p = Point::failed(kind, o.rx.name(), viewers, bitrate, format!("{e:#}"));
            p.crypto = enc.name();
            p.workers = workers;
            p.topology = topo.0.name().into();
            p.family = topo.1.name().into();
            res.points.push(p);
        }
    }
    write_results(o, res)?;
    Ok(true)
}

/// --find-max: the most viewers in `lo..=hi` (at --base-bitrate, with `enc` and `workers`)
/// for which a point of datapath `kind` holds, by bisection down to --find-max-step; every
/// point tried goes into `res.points`.
fn find_max(
    o: &SweepOpts,
    kind: &str,
    enc: Encryption,
    workers: Option<u32>,
    topo: (TopologyKind, Family),
    (lo, hi): (u32, u32),
    res: &mut SweepResults,
) -> Result<MaxViewers> {
    let holds = |n: u32, res: &mut SweepResults| -> Result<Option<bool>> {
        if !measure(o, kind, n, o.base_bitrate, enc, workers, topo, res)? {
            return Ok(None);
        }
        Ok(Some(res.points.last().is_some_and(Point::holds)))
    };
    let mut m = MaxViewers {
        datapath: kind.into(),
        crypto: enc.name(),
        family: topo.1.name().into(),
        workers,
        holds_at: None,
        fails_at: None,
    };
    let (mut good, mut bad) = (lo, hi);
    match holds(lo, res)? {
        None => return Ok(m),
        Some(false) => {
            m.fails_at = Some(lo);
            return Ok(m);
        }
        Some(true) => {}
    }
    if holds(hi, res)? == Some(true) {
        m.holds_at = Some(hi);
        return Ok(m);
    }
    while bad - good > o.find_max_step.max(1) {
        // Rounded to the step, so the points land on round numbers.
        let step = o.find_max_step.max(1);
        let mid = ((good + bad) / 2 / step * step).clamp(good + 1, bad - 1);
        if holds(mid, res)? == Some(true) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    m.holds_at = Some(good);
    m.fails_at = Some(bad);
    eprintln!(
        "bench: {kind}, {}{}{}: holds at {good} viewers, not at {bad}",
        enc.name(),
        workers_note(workers),
        topology_note(topo)
    );
    Ok(m)
}

/// The points of one datapath: the viewer sweep at --base-bitrate, then the bitrate sweep
/// at --bitrate-viewers (without repeating a point).
fn plan(o: &SweepOpts) -> Vec<(u32, u64)> {
    let mut plan: Vec<(u32, u64)> = o.viewers.iter().map(|&v| (v, o.base_bitrate)).collect();
    for &b in &o.bitrates {
        if !plan.contains(&(o.bitrate_viewers, b)) {
            plan.push((o.bitrate_viewers, b));
        }
    }
    plan
}

/// results.json as it stands: rewritten after every point, so an interrupted sweep keeps
/// what it measured.
fn write_results(o: &SweepOpts, res: &SweepResults) -> Result<()> {
    std::fs::write(
        o.out.join("results.json"),
        serde_json::to_string_pretty(res)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: SweepOpts,
    }

    fn opts(args: &[&str]) -> Result<SweepOpts, clap::Error> {
        Cli::try_parse_from(std::iter::once("sweep").chain(args.iter().copied())).map(|c| c.o)
    }

    #[test]
    fn workers_run_every_point_once_per_count() {
        // Without --workers the relay is started as before: once, without the flag.
        assert_eq!(worker_counts(&opts(&[]).unwrap()), [None]);
        let o = opts(&["--workers", "1,2", "--find-max", "50,600"]).unwrap();
        assert_eq!(o.workers, [1, 2]);
        assert_eq!(worker_counts(&o), [Some(1), Some(2)]);
        assert!(opts(&["--workers", "0"]).is_err());
        assert!(opts(&["--workers", "two"]).is_err());
    }

    #[test]
    fn families_are_a_list_like_topologies() {
        assert_eq!(opts(&[]).unwrap().family, [Family::Ipv4]);
        let o = opts(&["--family", "ipv4,ipv6", "--topology", "single,tree"]).unwrap();
        assert_eq!(o.family, [Family::Ipv4, Family::Ipv6]);
        assert_eq!(opts(&["--family", "ipv6"]).unwrap().family, [Family::Ipv6]);
        assert!(opts(&["--family", "ipx"]).is_err());
    }
}
