//! soak.svg: the samples as time series, one panel per concern, with the storm and flood
//! windows; drawn at the end of a run, or again from its samples.json (`soak-replot`).

use super::sample::Sample;
use super::schedule::Schedule;
use crate::plot::{draw_time_series, TimePanel};
use anyhow::{Context, Result};
use std::path::Path;

/// Draws soak.svg at `path`: RSS, CPU, fds and threads, connections, delivery with the
/// storm and flood windows, and what the NAK attacker got next to an honest viewer.
pub fn plot(samples: &[Sample], storms: &Schedule, flood: &Schedule, path: &Path) -> Result<()> {
    let line = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| {
        (
            name.to_string(),
            samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t_s, v)))
                .collect::<Vec<_>>(),
        )
    };
    // Log panels start at 10 kB/s: below that is only control traffic.
    let panel =
        |title: &str, y: &str, log_y: bool, series: Vec<(String, Vec<(f64, f64)>)>| TimePanel {
            title: title.into(),
            y_label: y.into(),
            series,
            y_min: log_y.then_some(0.01),
            log_y,
        };
    // Delivery is judged one interval late: draw each value at the middle of the stretch of
    // the stream it judges, with the storms and floods (as 0/1 steps) alongside.
    let delivery = |name: &str, f: &dyn Fn(&Sample) -> Option<f64>| {
        (
            name.to_string(),
            samples
                .iter()
                .filter_map(|s| {
                    let (a, b) = (s.delivery_from_s?, s.delivery_to_s?);
                    Some(((a + b) / 2.0, f(s)?))
                })
                .collect::<Vec<_>>(),
        )
    };
    let t_end = samples.last().map_or(0.0, |s| s.t_s);
    let steps = |name: &str, w: &Schedule| {
        let mut v = vec![(0.0, 0.0)];
        let mut start = w.first;
        while w.enabled && start < t_end {
            let end = (start + w.secs).min(t_end);
            v.extend([(start, 0.0), (start, 1.0), (end, 1.0), (end, 0.0)]);
            if w.every <= 0.0 {
                break;
            }
            start += w.every;
        }
        v.push((t_end, 0.0));
        (name.to_string(), v)
    };
    let panels = vec![
        panel(
            "Relay RSS",
            "MiB",
            false,
            vec![line("", &|s| s.rss_kb.map(|v| v as f64 / 1024.0))],
        ),
        panel(
            "Relay CPU (utime+stime) and machine softirq",
            "% of one core",
            false,
            vec![
                line("relay", &|s| s.cpu_pct),
                line("softirq+irq (machine)", &|s| Some(s.softirq_pct)),
            ],
        ),
        panel(
            "Relay open file descriptors and threads",
            "count",
            false,
            vec![
                line("fds", &|s| s.fds.map(|v| v as f64)),
                line("threads", &|s| s.threads.map(|v| v as f64)),
            ],
        ),
        panel(
            "Relay connections (srt_connections_current)",
            "connections",
            false,
            vec![
                line("request", &|s| s.conns_request.map(|v| v as f64)),
                line("handshake", &|s| s.conns_handshake.map(|v| v as f64)),
                line("publish", &|s| s.conns_publish.map(|v| v as f64)),
            ],
        ),
        panel(
            "Honest viewers' delivery (worst viewer) by publish time",
            "received / published",
            false,
            vec![
                delivery("delivered", &|s| s.honest_delivery_min),
                delivery("on time", &|s| s.honest_on_time_min),
                steps("NAK storm", storms),
                steps("handshake flood", flood),
            ],
        ),
        panel(
            "Data to the NAK attacker vs an honest viewer (log)",
            "MB/s",
            true,
            vec![
                line("to attacker (relay's count)", &|s| {
                    s.attacker_relay_bytes_per_s.map(|v| v / 1e6)
                }),
                line("attacker socket got", &|s| {
                    Some(s.attacker_rx_bytes_per_s / 1e6)
                }),
                line("honest viewer got", &|s| {
                    Some(s.honest_rx_bytes_per_s / 1e6)
                }),
            ],
        ),
    ];
    draw_time_series(&panels, path)
}

/// Redraws `DIR/soak.svg` from `DIR/samples.json` (e.g. after a change to the plot).
pub fn replot(dir: &Path) -> Result<()> {
    let path = dir.join("samples.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let samples: Vec<Sample> = serde_json::from_value(v["samples"].clone())?;
    let o = &v["run"]["opts"];
    let f = |k: &str| o[k].as_f64().unwrap_or(0.0);
    let b = |k: &str| o[k].as_bool().unwrap_or(false);
    let hostile = !b("no_hostile");
    let storms = Schedule {
        enabled: hostile && !b("no_nak_storm"),
        first: f("storm_at"),
        every: f("hostile_every"),
        secs: f("storm_secs"),
    };
    let flood = Schedule {
        enabled: hostile && !b("no_hs_flood"),
        first: f("flood_at"),
        every: f("hostile_every"),
        secs: f("flood_secs"),
    };
    plot(&samples, &storms, &flood, &dir.join("soak.svg"))
}
