//! The run in a few figures: the summary of the samples, and its text (printed and written
//! to summary.txt).

use super::sample::Sample;
use serde::{Deserialize, Serialize};

/// The run in a few figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub samples: usize,
    pub duration_s: f64,
    pub rss_kb_start: Option<u64>,
    pub rss_kb_end: Option<u64>,
    pub rss_kb_max: Option<u64>,
    /// Time-weighted mean and the highest sample of the relay's CPU (% of one core).
    pub cpu_pct_mean: Option<f64>,
    pub cpu_pct_max: Option<f64>,
    pub fds_start: Option<u64>,
    pub fds_end: Option<u64>,
    pub fds_min: Option<u64>,
    pub fds_max: Option<u64>,
    pub threads_max: Option<u64>,
    pub conns_request_max: Option<u64>,
    pub conns_handshake_max: Option<u64>,
    pub conns_request_end: Option<u64>,
    pub conns_handshake_end: Option<u64>,
    /// Worst honest viewer over every judged range, and the packet-weighted mean.
    pub honest_delivery_min: Option<f64>,
    pub honest_on_time_min: Option<f64>,
    pub honest_delivery_mean: Option<f64>,
    pub honest_packets_judged: u64,
    pub honest_gaps: u64,
    pub honest_max_gap: u64,
    /// Bytes to the NAK attacker per second over the whole run (relay's count; the
    /// attacker's socket's count), the highest sample, and per second of NAK storm.
    pub attacker_bytes_per_s_mean: Option<f64>,
    pub attacker_bytes_per_s_max: Option<f64>,
    pub attacker_rx_bytes_per_s_mean: f64,
    pub storm_seconds: f64,
    pub attacker_bytes_per_storm_s: Option<f64>,
    /// Bytes each honest viewer received per second, mean.
    pub honest_bytes_per_s_mean: f64,
    pub metrics_failures: usize,
}

fn wmean(v: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let (mut sum, mut w) = (0.0, 0.0);
    for (x, dt) in v {
        sum += x * dt;
        w += dt;
    }
    (w > 0.0).then(|| sum / w)
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let min_u = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).min();
    let max_u = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().filter_map(f).max();
    let first = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().find_map(f);
    let last = |f: &dyn Fn(&Sample) -> Option<u64>| samples.iter().rev().find_map(f);
    let max_f = |f: &dyn Fn(&Sample) -> Option<f64>| {
        samples
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let min_f = |f: &dyn Fn(&Sample) -> Option<f64>| {
        samples
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
    };
    let judged: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.honest_delivery_mean.is_some())
        .collect();
    let packets: u64 = judged.iter().map(|s| s.delivery_to - s.delivery_from).sum();
    let attacker_bytes: Option<f64> = {
        let v: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.attacker_relay_bytes_per_s.map(|b| b * s.interval_s))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    let total_s: f64 = samples.iter().map(|s| s.interval_s).sum();
    let storm_seconds: f64 = samples.iter().map(|s| s.storm * s.interval_s).sum();
    Summary {
        samples: samples.len(),
        duration_s: samples.last().map_or(0.0, |s| s.t_s),
        rss_kb_start: first(&|s| s.rss_kb),
        rss_kb_end: last(&|s| s.rss_kb),
        rss_kb_max: max_u(&|s| s.rss_kb),
        cpu_pct_mean: wmean(
            samples
                .iter()
                .filter_map(|s| s.cpu_pct.map(|c| (c, s.interval_s))),
        ),
        cpu_pct_max: max_f(&|s| s.cpu_pct),
        fds_start: first(&|s| s.fds),
        fds_end: last(&|s| s.fds),
        fds_min: min_u(&|s| s.fds),
        fds_max: max_u(&|s| s.fds),
        threads_max: max_u(&|s| s.threads),
        conns_request_max: max_u(&|s| s.conns_request),
        conns_handshake_max: max_u(&|s| s.conns_handshake),
        conns_request_end: last(&|s| s.conns_request),
        conns_handshake_end: last(&|s| s.conns_handshake),
        honest_delivery_min: min_f(&|s| s.honest_delivery_min),
        honest_on_time_min: min_f(&|s| s.honest_on_time_min),
        honest_delivery_mean: (packets > 0).then(|| {
            judged
                .iter()
                .map(|s| {
                    s.honest_delivery_mean.unwrap_or(0.0) * (s.delivery_to - s.delivery_from) as f64
                })
                .sum::<f64>()
                / packets as f64
        }),
        honest_packets_judged: packets,
        honest_gaps: samples.iter().map(|s| s.honest_gaps).sum(),
        honest_max_gap: samples.iter().map(|s| s.honest_max_gap).max().unwrap_or(0),
        attacker_bytes_per_s_mean: attacker_bytes.map(|b| b / total_s.max(1e-9)),
        attacker_bytes_per_s_max: max_f(&|s| s.attacker_relay_bytes_per_s),
        attacker_rx_bytes_per_s_mean: wmean(
            samples
                .iter()
                .map(|s| (s.attacker_rx_bytes_per_s, s.interval_s)),
        )
        .unwrap_or(0.0),
        storm_seconds,
        attacker_bytes_per_storm_s: match attacker_bytes {
            Some(b) if storm_seconds > 0.0 => Some(b / storm_seconds),
            _ => None,
        },
        honest_bytes_per_s_mean: wmean(
            samples
                .iter()
                .map(|s| (s.honest_rx_bytes_per_s, s.interval_s)),
        )
        .unwrap_or(0.0),
        metrics_failures: samples.iter().filter(|s| !s.metrics_ok).count(),
    }
}

/// The summary as printed and written to summary.txt.
pub fn summary_text(m: &Summary, run_line: &str, outcome: &str, extra: &[String]) -> String {
    let mib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let u = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mbs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2} MB/s", v / 1e6));
    let mut s = String::new();
    s += &format!("{run_line}\n");
    s += &format!("  outcome          {outcome}\n");
    s += &format!(
        "  relay RSS        start {}, end {}, max {}\n",
        mib(m.rss_kb_start),
        mib(m.rss_kb_end),
        mib(m.rss_kb_max)
    );
    s += &format!(
        "  relay CPU        mean {} %, max {} % of one core (the busiest sample interval)\n",
        f(m.cpu_pct_mean, 1),
        f(m.cpu_pct_max, 1),
    );
    s += &format!(
        "  open fds         min {}, max {} (start {}, end {}); threads max {}\n",
        u(m.fds_min),
        u(m.fds_max),
        u(m.fds_start),
        u(m.fds_end),
        u(m.threads_max)
    );
    s += &format!(
        "  connections      request max {} (end {}), handshake max {} (end {})\n",
        u(m.conns_request_max),
        u(m.conns_request_end),
        u(m.conns_handshake_max),
        u(m.conns_handshake_end)
    );
    s += &format!(
        "  honest viewers   delivery min {} (on time min {}), mean {} over {} packets; {} gaps, longest {} packets\n",
        f(m.honest_delivery_min, 4),
        f(m.honest_on_time_min, 4),
        f(m.honest_delivery_mean, 5),
        m.honest_packets_judged,
        m.honest_gaps,
        m.honest_max_gap
    );
    s += &format!(
        "  NAK attacker     relay sent it {} on average, {} at most (a sample), {} per storm second ({:.0} s of storms); its socket got {}\n",
        mbs(m.attacker_bytes_per_s_mean),
        mbs(m.attacker_bytes_per_s_max),
        mbs(m.attacker_bytes_per_storm_s),
        m.storm_seconds,
        mbs(Some(m.attacker_rx_bytes_per_s_mean))
    );
    s += &format!(
        "  honest bytes     {} per viewer\n",
        mbs(Some(m.honest_bytes_per_s_mean))
    );
    s += &format!("  metrics          {} failed scrapes\n", m.metrics_failures);
    for l in extra {
        s += &format!("  {l}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: u64, cpu: f64, fds: u64) -> Sample {
        Sample {
            t_s: t,
            interval_s: 5.0,
            rss_kb: Some(rss),
            cpu_pct: Some(cpu),
            fds: Some(fds),
            metrics_ok: true,
            ..Default::default()
        }
    }

    #[test]
    fn summary_of_samples() {
        let mut s = vec![
            sample(5.0, 10_000, 10.0, 12),
            sample(10.0, 12_000, 50.0, 14),
            sample(15.0, 11_000, 30.0, 11),
        ];
        s[1].storm = 0.5;
        s[1].attacker_relay_bytes_per_s = Some(2e6);
        s[2].attacker_relay_bytes_per_s = Some(1e5);
        s[0].attacker_relay_bytes_per_s = Some(1e5);
        s[1].honest_delivery_min = Some(0.9);
        s[1].honest_delivery_mean = Some(0.95);
        s[1].honest_on_time_min = Some(0.8);
        (s[1].delivery_from, s[1].delivery_to) = (0, 100);
        s[2].honest_delivery_min = Some(1.0);
        s[2].honest_delivery_mean = Some(1.0);
        s[2].honest_on_time_min = Some(1.0);
        (s[2].delivery_from, s[2].delivery_to) = (100, 400);
        s[2].honest_gaps = 2;
        s[2].honest_max_gap = 7;
        s[2].metrics_ok = false;
        let m = summarize(&s);
        assert_eq!(m.samples, 3);
        assert_eq!(m.duration_s, 15.0);
        assert_eq!(
            (m.rss_kb_start, m.rss_kb_end, m.rss_kb_max),
            (Some(10_000), Some(11_000), Some(12_000))
        );
        assert_eq!(m.cpu_pct_mean, Some(30.0));
        assert_eq!(m.cpu_pct_max, Some(50.0));
        assert_eq!((m.fds_min, m.fds_max), (Some(11), Some(14)));
        assert_eq!((m.fds_start, m.fds_end), (Some(12), Some(11)));
        assert_eq!(m.honest_delivery_min, Some(0.9));
        assert_eq!(m.honest_on_time_min, Some(0.8));
        assert_eq!(m.honest_packets_judged, 400);
        assert!((m.honest_delivery_mean.unwrap() - (95.0 + 300.0) / 400.0).abs() < 1e-12);
        assert_eq!((m.honest_gaps, m.honest_max_gap), (2, 7));
        // (1e5 + 2e6 + 1e5) * 5 s over 15 s.
        assert!((m.attacker_bytes_per_s_mean.unwrap() - 2.2e6 / 3.0).abs() < 1e-6);
        assert_eq!(m.attacker_bytes_per_s_max, Some(2e6));
        assert_eq!(m.storm_seconds, 2.5);
        assert!((m.attacker_bytes_per_storm_s.unwrap() - 2.2e6 * 5.0 / 2.5).abs() < 1e-6);
        assert_eq!(m.metrics_failures, 1);
        assert_eq!(
            Sample::CSV_HEADER.split(',').count(),
            s[0].csv_row().split(',').count()
        );
    }
}
