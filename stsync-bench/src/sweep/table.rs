//! The sweep's markdown table (table.md).

use super::{Point, SweepResults};

pub fn table(r: &SweepResults) -> String {
    let mut s = String::new();
    let m = &r.machine;
    s += &format!(
        "Machine: {} CPUs, {}, Linux {}. Window {} s after {} s warm-up per point.\n\n",
        m.nproc, m.cpu_model, m.kernel, r.duration_s, r.warmup_s
    );
    if !r.relay_bin.is_empty() {
        s += &format!(
            "Relay {} (eBPF object {}); generator receive: {}. Load average at start: {}; at end: {}.\n\n",
            r.relay_bin, r.ebpf_object, r.rx, r.loadavg_start, r.loadavg_end
        );
    }
    s += "holds = offered ≥ 0.99 and on time min ≥ 0.999 (every viewer got ≥ 99.9 % of the window's packets within the latency).\n\n";
    if let Some(b) = &r.baseline {
        s += &format!(
            "Raw UDP baseline (sendmmsg, {} B, relay→viewers veth): {:.0} datagrams/s sent, {:.0} received, {:.0} % busy, {:.0} ns of busy CPU per received datagram.\n\n",
            b.payload, b.sent_pps, b.received_pps, b.system_busy_pct, b.busy_ns_per_packet
        );
    }
    for (k, e) in &r.datapath_errors {
        s += &format!("Datapath {k} not measured: {e}\n\n");
    }
    s += "| datapath | crypto | workers | rx | viewers | Mbit/s | holds | offered | delivered min | mean | on time min | ACKs/s / viewer | relay CPU % | relay % / viewer | syscalls/s | syscalls/s / viewer | softirq % | backlog drops | relay+softirq % | ns/delivered pkt | busy−gen−other % | generator % (user) | p50 µs | p99 µs | max µs | relay RSS MiB |\n";
    s += "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &r.points {
        if let Some(e) = &p.error {
            s += &format!(
                "| {} | {} | {} | {} | {} | {:.0} | no | failed: {} |||||||||||||||||||\n",
                dp(p),
                p.crypto,
                workers(p.workers),
                p.rx,
                p.viewers,
                p.bitrate_mbps,
                e.replace('|', "/")
            );
            continue;
        }
        let opt =
            |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
        s += &format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {:.3} | {:.4} | {:.4} | {} | {} | {:.1} | {:.3} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.1} ({}) | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            dp(p),
            p.crypto,
            workers(p.workers),
            p.rx,
            p.viewers,
            p.bitrate_mbps,
            if p.holds() { "yes" } else { "no" },
            p.offered,
            p.delivery_min,
            p.delivery_mean,
            opt(p.on_time_min, 4),
            opt(p.acks_per_viewer_s, 1),
            p.relay_pct,
            p.relay_pct_per_viewer,
            opt(p.relay_syscalls_per_s, 0),
            opt(p.syscalls_per_viewer_s, 1),
            p.softirq_pct,
            p.backlog_drops.map_or("-".into(), |d| d.to_string()),
            p.relay_total_pct,
            p.ns_per_delivered,
            p.attributed_pct,
            p.generator_pct,
            opt(p.generator_user_pct, 1),
            p.latency_p50_us,
            p.latency_p99_us,
            p.latency_max_us,
            p.relay_rss_kb as f64 / 1024.0
        );
    }
    // --find-max's answers, or --workers to compare: the same figures per group.
    if !r.max_viewers.is_empty() || r.points.iter().any(|p| p.workers.is_some()) {
        s += &summary(&r.points);
    }
    s += &super::tree::tree_tables(&r.points);
    s += &super::family::family_tables(&r.points);
    s
}

/// The datapath as the main table shows it: "(tree)" after it for the tree topology,
/// whose relay figures are the origin's, "IPv6" for the IPv6 points.
fn dp(p: &Point) -> String {
    let mut s = p.datapath.clone();
    if p.family == "ipv6" {
        s += " IPv6";
    }
    if p.topology == "tree" {
        s += " (tree: origin)";
    }
    s
}

/// The relay's --workers as the tables show it ("-": not passed).
fn workers(w: Option<u32>) -> String {
    w.map_or("-".into(), |w| w.to_string())
}

/// Points of one datapath, encryption, worker count and bitrate, in the order measured.
fn groups(points: &[Point]) -> Vec<Vec<&Point>> {
    let key = |p: &Point| {
        (
            p.datapath.clone(),
            p.crypto.clone(),
            p.workers,
            p.bitrate_mbps.to_bits(),
        )
    };
    let mut groups: Vec<Vec<&Point>> = Vec::new();
    for p in points {
        match groups.iter_mut().find(|g| key(g[0]) == key(p)) {
            Some(g) => g.push(p),
            None => groups.push(vec![p]),
        }
    }
    groups
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Per group: the most viewers that held and the fewest that did not (which is what
/// --find-max's bisection ends on), and the relay's cost at the former (the mean of its
/// points there, when --repeat measured it more than once).
fn summary(points: &[Point]) -> String {
    let mut s = "\nPer datapath, encryption, workers and bitrate: the most viewers that held, and the relay's cost there.\n\n".to_string();
    s += "| datapath | crypto | workers | Mbit/s | viewers tried | most viewers that held | fewest that did not | relay CPU % | relay % / viewer | syscalls/s / viewer | p99 µs |\n";
    s += "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n";
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for g in groups(points) {
        let mut tried: Vec<u32> = g.iter().map(|p| p.viewers).collect();
        tried.sort_unstable();
        tried.dedup();
        let most = g.iter().filter(|p| p.holds()).map(|p| p.viewers).max();
        let fewest_not = g.iter().filter(|p| !p.holds()).map(|p| p.viewers).min();
        let at: Vec<&&Point> = g
            .iter()
            .filter(|p| p.holds() && Some(p.viewers) == most)
            .collect();
        s += &format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            g[0].datapath,
            g[0].crypto,
            workers(g[0].workers),
            g[0].bitrate_mbps,
            tried
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            most.map_or("-".into(), |v| v.to_string()),
            fewest_not.map_or("-".into(), |v| v.to_string()),
            opt(mean(at.iter().map(|p| p.relay_pct)), 1),
            opt(mean(at.iter().map(|p| p.relay_pct_per_viewer)), 3),
            opt(mean(at.iter().filter_map(|p| p.syscalls_per_viewer_s)), 1),
            opt(mean(at.iter().map(|p| p.latency_p99_us)), 0),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(workers: u32, viewers: u32, holds: bool, relay_pct: f64) -> Point {
        let mut p = Point::failed("userspace", "xdp", viewers, 4_000_000, String::new());
        p.error = None;
        p.workers = Some(workers);
        p.offered = 1.0;
        p.on_time_min = Some(if holds { 1.0 } else { 0.9 });
        p.relay_pct = relay_pct;
        p.relay_pct_per_viewer = relay_pct / viewers as f64;
        p.syscalls_per_viewer_s = Some(10.0);
        p.latency_p99_us = 500.0;
        p
    }

    #[test]
    fn summary_has_a_row_per_worker_count() {
        // As --find-max with --workers 1,2 measures them: one count's bisection, then the
        // other's; the second count's 300 measured twice (--repeat's case).
        let points = [
            point(1, 50, true, 10.0),
            point(1, 600, false, 90.0),
            point(1, 300, true, 60.0),
            point(2, 50, true, 12.0),
            point(2, 600, false, 120.0),
            point(2, 300, true, 60.0),
            point(2, 300, true, 90.0),
        ];
        let s = summary(&points);
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("| userspace")).collect();
        assert_eq!(
            rows,
            [
                "| userspace | clear | 1 | 4 | 50, 300, 600 | 300 | 600 | 60.0 | 0.200 | 10.0 | 500 |",
                "| userspace | clear | 2 | 4 | 50, 300, 600 | 300 | 600 | 75.0 | 0.250 | 10.0 | 500 |",
            ]
        );
    }
}
