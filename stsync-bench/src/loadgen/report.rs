//! The run's figures: a row per viewer, delivery and transit latency over the window, and
//! what else the run measured.

use super::conn::Hs;
use super::opts::Opts;
use super::viewers::{Viewer, Window};
use crate::hist::Hist;
use crate::report::*;
use crate::sink::SinkReport;
use crate::syscalls::SyscallReport;
use std::collections::BTreeMap;
use stsync_user::srt::rtt::Rtt;

/// What the run measured besides the viewers.
pub(super) struct Measured {
    pub(super) cpu: CpuReport,
    pub(super) publisher: PublisherReport,
    pub(super) generator: GeneratorReport,
    /// Full ACKs the viewers sent during the window.
    pub(super) acks_in_window: u64,
    pub(super) relay_syscalls: Option<SyscallReport>,
    pub(super) relay_syscalls_error: Option<String>,
    pub(super) sink: Option<SinkReport>,
    pub(super) more_relays: Vec<RelayCost>,
}

pub(super) fn build(o: &Opts, viewers: &[Viewer], win: &Window, m: Measured) -> Report {
    let n = viewers.len();
    let expected = win.end - win.start;
    let v = per_viewer(viewers, expected);
    let delivery = delivery(&v.rows, expected);
    let window_secs = m.cpu.seconds;
    let all = v.latency;
    let mut report = Report {
        config: RunConfig {
            relay: match o.second_relay {
                Some(b) => format!("{},{b}", o.relay),
                None => o.relay.to_string(),
            },
            viewers: o.viewers,
            bitrate_bps: o.media.bitrate,
            payload: o.media.payload,
            latency_ms: o.media.latency_ms,
            warmup_s: o.warmup,
            duration_s: o.duration,
            sid_template: o.sid_template.clone(),
            rx: o.rx.name().into(),
            publish_key_len: o.publish_secret().map(|s| s.key_len),
            view_key_len: o.view_secret().map(|s| s.key_len),
        },
        connected: v.rows.iter().filter(|r| r.state == "connected").count() as u32,
        not_connected: v.rejections,
        window_first_index: win.start,
        window_end_index: win.end,
        delivery,
        latency_us: LatencyReport {
            p50: all.quantile(0.5) as f64 / 1e3,
            p99: all.quantile(0.99) as f64 / 1e3,
            p999: all.quantile(0.999) as f64 / 1e3,
            max: all.max as f64 / 1e3,
            mean: all.mean() as f64 / 1e3,
            samples: all.count,
        },
        viewer_totals: v.totals,
        publisher: m.publisher,
        cpu: m.cpu,
        generator: m.generator,
        delivered_pps: 0.0,
        full_acks_per_viewer_s: None,
        relay_syscalls: m.relay_syscalls,
        relay_syscalls_error: m.relay_syscalls_error,
        sink: m.sink,
        more_relays: m.more_relays,
        per_viewer: if o.per_viewer { Some(v.rows) } else { None },
    };
    report.delivered_pps = report.delivery.total_delivered as f64 / window_secs.max(1e-6);
    report.full_acks_per_viewer_s = if n > 0 {
        Some(m.acks_in_window as f64 / window_secs.max(1e-6) / n as f64)
    } else {
        None
    };
    report
}

/// The viewers' rows and what adds up over them.
struct PerViewer {
    rows: Vec<ViewerRow>,
    totals: ViewerTotals,
    /// Viewers not connected, by why.
    rejections: BTreeMap<String, u32>,
    /// Transit latency, all viewers.
    latency: Hist,
}

fn per_viewer(viewers: &[Viewer], expected: u64) -> PerViewer {
    let mut all = Hist::new();
    let mut rows = Vec::with_capacity(viewers.len());
    let mut totals = ViewerTotals::default();
    let mut rejections: BTreeMap<String, u32> = Default::default();
    let share = |k: u64| {
        if expected > 0 {
            k as f64 / expected as f64
        } else {
            0.0
        }
    };
    for (i, v) in viewers.iter().enumerate() {
        all.merge(&v.hist);
        let state = match v.conn.state {
            Hs::Connected | Hs::Closed if v.rx.is_some() => "connected".to_string(),
            Hs::Rejected(code) => format!("rejected {code}"),
            Hs::TimedOut => "timed out".to_string(),
            Hs::KeyRefused => "KMRSP missing or not our KMREQ".to_string(),
            s => format!("{s:?}"),
        };
        if state != "connected" {
            *rejections.entry(state.clone()).or_default() += 1;
        }
        let rs = v.rx.as_ref().map(|r| r.stats).unwrap_or_default();
        let rtt = v.rx.as_ref().map(|r| r.rtt).unwrap_or_else(Rtt::default);
        totals.add(&v.st, rs.lost, rs.dropped, rs.acks_unanswered);
        rows.push(ViewerRow {
            viewer: i as u32,
            addr: v.conn.src.map(|a| a.to_string()).unwrap_or_default(),
            state,
            unique: v.st.unique,
            delivery: share(v.st.unique),
            on_time: share(v.st.on_time),
            latency_p50_us: v.hist.quantile(0.5) as f64 / 1e3,
            latency_p99_us: v.hist.quantile(0.99) as f64 / 1e3,
            latency_max_us: v.hist.max as f64 / 1e3,
            losses: rs.lost,
            rexmit_received: v.st.rexmit_received,
            rtt_us: rtt.rtt_us,
        });
    }
    PerViewer {
        rows,
        totals,
        rejections,
        latency: all,
    }
}

fn delivery(rows: &[ViewerRow], expected: u64) -> DeliveryReport {
    let n = rows.len();
    let ratios: Vec<f64> = rows.iter().map(|r| r.delivery).collect();
    let on_time: Vec<f64> = rows.iter().map(|r| r.on_time).collect();
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min).min(1e9);
    let mean = |v: &[f64]| {
        if n > 0 {
            v.iter().sum::<f64>() / n as f64
        } else {
            0.0
        }
    };
    DeliveryReport {
        expected_per_viewer: expected,
        min: min(&ratios),
        mean: mean(&ratios),
        max: ratios.iter().copied().fold(0.0, f64::max),
        on_time_min: min(&on_time),
        on_time_mean: mean(&on_time),
        viewers_complete: rows.iter().filter(|r| r.unique == expected).count() as u32,
        total_delivered: rows.iter().map(|r| r.unique).sum(),
    }
}
