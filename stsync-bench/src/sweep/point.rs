//! One point of the sweep: a fresh relay with one datapath, stsync-loadgen against it from
//! the publisher's and the viewers' namespaces, and its report flattened into a `Point`.

use super::family::host_port;
use super::relay::{exe_sibling, start_relay, start_relay_as, wait_pulling, RelayProc, RelaySpec};
use super::{
    Encryption, Family, Point, SweepOpts, Topology, TopologyKind, KEY_SECRET, NS_EDGE0, NS_EDGE1,
    NS_ORIGIN, NS_PUB, NS_VIEW, PUBLISH_PASSPHRASE, TOKEN, VIEW_IFACE, VIEW_IFACE_B,
    VIEW_PASSPHRASE,
};
use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stsync_user::os::proc::{self, CpuTimes};

fn attach_name(a: crate::sink::Attach) -> &'static str {
    match a {
        crate::sink::Attach::Xdp => "xdp",
        crate::sink::Attach::XdpGeneric => "xdp-generic",
        crate::sink::Attach::Tc => "tc",
    }
}

/// Waits (bounded) until the machine has been below `pct` busy for 3 consecutive seconds;
/// returns the busy % of the last second.
fn wait_quiet(pct: f64, max_wait: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(max_wait);
    let tck = proc::clk_tck() as f64;
    let mut quiet_secs = 0;
    loop {
        let a = CpuTimes::read();
        std::thread::sleep(Duration::from_secs(1));
        let busy = (CpuTimes::read().busy() - a.busy()) as f64 / tck * 100.0;
        quiet_secs = if busy < pct { quiet_secs + 1 } else { 0 };
        if quiet_secs >= 3 {
            return busy;
        }
        if Instant::now() > deadline {
            eprintln!(
                "bench:   machine still {busy:.0} % busy after {max_wait} s: measuring anyway"
            );
            return busy;
        }
    }
}

/// The relays of a point, started: the single relay, or the tree's origin then its edges.
/// Killed on drop (also on error).
struct Relays {
    /// The one whose CPU and system calls are the point's `relay_*` (the origin).
    main: RelayProc,
    edges: Vec<RelayProc>,
}

impl Relays {
    fn start(
        o: &SweepOpts,
        kind: &str,
        workers: Option<u32>,
        tag: &str,
        enc: Encryption,
        (topo, fam): (TopologyKind, Family),
    ) -> Result<Relays> {
        if topo == TopologyKind::Single {
            return Ok(Relays {
                main: start_relay(o, kind, workers, &o.out, tag, enc, fam)?,
                edges: Vec::new(),
            });
        }
        if enc != Encryption::default() {
            bail!("--topology tree measures clear streams only");
        }
        let origin = start_relay_as(
            o,
            kind,
            workers,
            &o.out,
            tag,
            enc,
            &RelaySpec {
                ns: NS_ORIGIN,
                name: "origin",
                family: fam,
                upstream: None,
                key_secret: Some(KEY_SECRET),
                health: (NS_PUB, SocketAddr::new(fam.relay_pub(), 9998)),
            },
        )?;
        let mut relays = Relays {
            main: origin,
            edges: Vec::new(),
        };
        let local_api = "127.0.0.1:9998".parse()?;
        for (i, ns) in [NS_EDGE0, NS_EDGE1].into_iter().enumerate() {
            let edge = start_relay_as(
                o,
                kind,
                workers,
                &o.out,
                tag,
                enc,
                &RelaySpec {
                    ns,
                    name: &format!("edge{i}"),
                    family: fam,
                    upstream: Some(fam.edge_upstream(i)),
                    key_secret: Some(KEY_SECRET),
                    health: (ns, local_api),
                },
            )?;
            relays.edges.push(edge);
        }
        for ns in [NS_EDGE0, NS_EDGE1] {
            wait_pulling(ns, local_api, Duration::from_secs(15))?;
        }
        Ok(relays)
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_point(
    o: &SweepOpts,
    kind: &str,
    viewers: u32,
    bitrate: u64,
    enc: Encryption,
    workers: Option<u32>,
    (topo, fam): (TopologyKind, Family),
) -> Result<Point> {
    // Another topology's point ran before, or something else on the machine removed our
    // namespaces: (re)build them.
    Topology::ensure(topo)?;
    // Repeated points (--repeat, --find-max) keep their own files.
    let tree = if topo == TopologyKind::Tree {
        "tree-"
    } else {
        ""
    };
    let mut base = format!(
        "{tree}{}{kind}-{}-{viewers}v-{}k",
        fam.tag(),
        enc.name(),
        bitrate / 1000
    );
    if let Some(w) = workers {
        base += &format!("-{w}w");
    }
    let tag = (1..)
        .map(|k| {
            if k == 1 {
                base.clone()
            } else {
                format!("{base}-{k}")
            }
        })
        .find(|t| !o.out.join(format!("point-{t}.json")).exists())
        .expect("a free name");
    let busy_before = o.wait_quiet.map(|pct| wait_quiet(pct, o.quiet_max_wait));
    let relays = Relays::start(o, kind, workers, &tag, enc, (topo, fam))?;
    let json = o.out.join(format!("point-{tag}.json"));
    let bin = o
        .loadgen_bin
        .clone()
        .unwrap_or_else(|| exe_sibling("stsync-loadgen"));
    let mut cmd = loadgen_command(
        o,
        &bin,
        viewers,
        bitrate,
        relays.main.pid(),
        &json,
        enc,
        fam,
    );
    if topo == TopologyKind::Tree {
        let pids: Vec<String> = relays.edges.iter().map(|e| e.pid().to_string()).collect();
        // Viewers on edge 0 (relay_view, as for the single relay) and edge 1.
        cmd.args(["--second-relay", &host_port(fam.edge_view(1), 9999)])
            .args(["--watch-more", &pids.join(",")]);
        if o.rx == crate::loadgen::RxMode::Xdp {
            cmd.args(["--sink-iface", VIEW_IFACE_B]);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs_f64(o.warmup + o.duration + 90.0);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("stsync-loadgen ran past its time bound");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let counters = save_relay_metrics(o, &tag, topo, fam)?;
    drop(relays);
    if !status.success() {
        bail!("stsync-loadgen failed ({status})");
    }
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let mut p = Point::from_report(kind, &r, &json);
    p.busy_before_pct = busy_before;
    p.workers = workers;
    p.topology = topo.name().into();
    p.family = fam.name().into();
    p.kernel_clones = counters.clones;
    p.kernel_clone_failures = counters.clone_failures;
    p.kernel_packets_seen = counters.packets_seen;
    Ok(p)
}

/// stsync-loadgen for one point: the publisher in stsb-pub, the viewers in stsb-view,
/// watching the relay's process, its report in `json`; all calling over `fam`.
#[allow(clippy::too_many_arguments)]
fn loadgen_command(
    o: &SweepOpts,
    bin: &Path,
    viewers: u32,
    bitrate: u64,
    relay_pid: u32,
    json: &Path,
    enc: Encryption,
    fam: Family,
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--relay", &host_port(fam.relay_view(), 9999)])
        .args(["--pub-relay", &host_port(fam.relay_pub(), 9999)])
        .args(["--http", &host_port(fam.relay_pub(), 9998)])
        .args(["--token", TOKEN])
        .args(["--viewers", &viewers.to_string()])
        .args(["--bitrate", &bitrate.to_string()])
        .args(["--warmup", &o.warmup.to_string()])
        .args(["--duration", &o.duration.to_string()])
        .args(["--viewer-ip", &fam.viewer_base().to_string()])
        .args(["--pub-netns", NS_PUB, "--view-netns", NS_VIEW])
        .args(["--watch-pid", &relay_pid.to_string()])
        .arg("--json")
        .arg(json);
    if !o.no_syscalls {
        cmd.arg("--count-syscalls").args([
            "--syscall-counter",
            match o.syscall_counter {
                crate::syscalls::Method::Bpf => "bpf",
                crate::syscalls::Method::Perf => "perf",
            },
        ]);
    }
    if enc.publish.is_some() {
        cmd.args(["--publish-passphrase", PUBLISH_PASSPHRASE]);
    }
    if enc.view.is_some() {
        cmd.args(["--view-passphrase", VIEW_PASSPHRASE]);
    }
    if let Some(l) = enc.key_len() {
        cmd.args(["--pbkeylen", &l.to_string()]);
    }
    if let Some(obj) = &o.sink_object {
        cmd.arg("--sink-object").arg(obj);
    }
    if o.rx == crate::loadgen::RxMode::Xdp {
        cmd.args(["--rx", "xdp", "--sink-iface", VIEW_IFACE])
            .args(["--sink-attach", attach_name(o.sink_attach)]);
    }
    cmd
}

/// The relay's kernel counters, from its metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct KernelCounters {
    pub(super) clones: Option<u64>,
    pub(super) clone_failures: Option<u64>,
    pub(super) packets_seen: Option<u64>,
}

impl KernelCounters {
    /// The unlabelled `stsync_kernel_*` totals of a metrics page.
    pub(super) fn parse(metrics: &str) -> KernelCounters {
        let get = |name: &str| {
            metrics.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
            })
        };
        KernelCounters {
            clones: get("stsync_kernel_clones_total"),
            clone_failures: get("stsync_kernel_clone_failures_total"),
            packets_seen: get("stsync_kernel_packets_seen_total"),
        }
    }
}

/// The relays' own view (drops, per-connection counters, the edges' upstream), for
/// diagnosis: their metrics without the per-connection series, in metrics-<tag>.txt (the
/// single relay or the origin) and metrics-edge<i>-<tag>.txt. Returns the kernel counters
/// of the first (the single relay or the origin).
fn save_relay_metrics(
    o: &SweepOpts,
    tag: &str,
    topo: TopologyKind,
    fam: Family,
) -> Result<KernelCounters> {
    let mut apis = vec![(
        NS_PUB,
        host_port(fam.relay_pub(), 9998),
        format!("metrics-{tag}.txt"),
    )];
    if topo == TopologyKind::Tree {
        for (i, ns) in [NS_EDGE0, NS_EDGE1].into_iter().enumerate() {
            apis.push((
                ns,
                "127.0.0.1:9998".into(),
                format!("metrics-edge{i}-{tag}.txt"),
            ));
        }
    }
    let mut counters = None;
    for (ns, addr, file) in apis {
        if let Ok(body) = crate::http::metrics(Some(ns), addr.parse()?) {
            let keep: String = body
                .lines()
                .filter(|l| !l.starts_with("srt_connection_"))
                .map(|l| format!("{l}\n"))
                .collect();
            counters.get_or_insert_with(|| KernelCounters::parse(&keep));
            let _ = std::fs::write(o.out.join(file), keep);
        }
    }
    Ok(counters.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_are_read_from_the_metrics() {
        let m = "# HELP stsync_kernel_clones_total x\n\
                 stsync_kernel_clones_total 5934463\n\
                 stsync_kernel_clone_failures_total 2997\n\
                 stsync_kernel_clones_total_by{x=\"1\"} 3\n\
                 stsync_kernel_packets_seen_total 6013\n";
        assert_eq!(
            KernelCounters::parse(m),
            KernelCounters {
                clones: Some(5_934_463),
                clone_failures: Some(2997),
                packets_seen: Some(6013)
            }
        );
        assert_eq!(
            KernelCounters::parse("srt_up 1\n"),
            KernelCounters::default()
        );
    }
}
