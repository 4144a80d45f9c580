//! The sweep's markdown table (table.md).

use super::SweepResults;

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
    s += "| datapath | crypto | rx | viewers | Mbit/s | holds | offered | delivered min | mean | on time min | ACKs/s / viewer | relay CPU % | relay % / viewer | syscalls/s | syscalls/s / viewer | softirq % | backlog drops | relay+softirq % | ns/delivered pkt | busy−gen−other % | generator % (user) | p50 µs | p99 µs | max µs | relay RSS MiB |\n";
    s += "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &r.points {
        if let Some(e) = &p.error {
            s += &format!(
                "| {} | {} | {} | {} | {:.0} | no | failed: {} |||||||||||||||||||\n",
                p.datapath,
                p.crypto,
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
            "| {} | {} | {} | {} | {:.0} | {} | {:.3} | {:.4} | {:.4} | {} | {} | {:.1} | {:.3} | {} | {} | {:.1} | {} | {:.1} | {:.0} | {:.1} | {:.1} ({}) | {:.0} | {:.0} | {:.0} | {:.1} |\n",
            p.datapath,
            p.crypto,
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
    if !r.max_viewers.is_empty() {
        s += "\n| datapath | crypto | most viewers that held | fewest that did not |\n|---|---|---:|---:|\n";
        for m in &r.max_viewers {
            let n = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            s += &format!(
                "| {} | {} | {} | {} |\n",
                m.datapath,
                m.crypto,
                n(m.holds_at),
                n(m.fails_at)
            );
        }
    }
    s
}
