//! The sweep's plot (SVG): CPU, CPU per viewer, delivery, latency, the relay process's CPU
//! and syscalls per viewer against viewers, and CPU against bitrate, one line per datapath.

use crate::sweep::{Point, SweepResults};
use anyhow::{anyhow, Result};
use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use std::path::Path;

fn series<'a>(
    r: &'a SweepResults,
    kind: &'a str,
    by_bitrate: Option<u32>,
    base_mbps: f64,
) -> Vec<&'a Point> {
    let mut v: Vec<&Point> = r
        .points
        .iter()
        .filter(|p| line_of(p) == kind && p.error.is_none())
        .filter(|p| match by_bitrate {
            Some(viewers) => p.viewers == viewers,
            None => (p.bitrate_mbps - base_mbps).abs() < 1e-9,
        })
        .collect();
    v.sort_by(|a, b| {
        let key = |p: &Point| {
            if by_bitrate.is_some() {
                p.bitrate_mbps
            } else {
                p.viewers as f64
            }
        };
        key(a).total_cmp(&key(b))
    });
    v
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Panel,
    r: &SweepResults,
    kinds: &[String],
    title: &str,
    y_label: &str,
    log_y: bool,
    bitrate_viewers: Option<u32>,
    base_mbps: f64,
    y: &dyn Fn(&Point) -> f64,
) -> Result<()> {
    let x_of = |p: &Point| {
        if bitrate_viewers.is_some() {
            p.bitrate_mbps
        } else {
            p.viewers as f64
        }
    };
    let pts: Vec<&Point> = kinds
        .iter()
        .flat_map(|k| series(r, k, bitrate_viewers, base_mbps))
        .collect();
    let x_max = pts.iter().map(|p| x_of(p)).fold(1.0, f64::max) * 1.3;
    let y_max = pts.iter().map(|p| y(p)).fold(1e-6, f64::max) * 1.15;
    let y_min = pts
        .iter()
        .map(|p| y(p))
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min)
        .min(y_max / 10.0)
        * 0.8;
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("plot: {e:?}");
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(56);
    let x_label = if bitrate_viewers.is_some() {
        "bitrate (Mbit/s)"
    } else {
        "viewers"
    };
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(e)?;
            for (i, k) in kinds.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                let s: Vec<(f64, f64)> = series(r, k, bitrate_viewers, base_mbps)
                    .iter()
                    .map(|p| (x_of(p), y(p).max(if log_y { y_min } else { 0.0 })))
                    .collect();
                chart
                    .draw_series(LineSeries::new(s.clone(), c.stroke_width(2)))
                    .map_err(e)?
                    .label(k.as_str())
                    .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 16, yy)], c));
                chart
                    .draw_series(s.iter().map(|&(x, yy)| Circle::new((x, yy), 3, c.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(e)?;
        }};
    }
    match (bitrate_viewers.is_some(), log_y) {
        (false, true) => draw!(b
            .build_cartesian_2d((0.8..x_max).log_scale(), (y_min..y_max).log_scale())
            .map_err(e)?),
        (false, false) => draw!(b
            .build_cartesian_2d((0.8..x_max).log_scale(), 0.0..y_max)
            .map_err(e)?),
        (true, _) => draw!(b.build_cartesian_2d(0.0..x_max, 0.0..y_max).map_err(e)?),
    }
    Ok(())
}

/// One line per datapath, encryption and worker count ("ebpf", "ebpf aes128",
/// "userspace 2w").
fn line_of(p: &Point) -> String {
    let mut line = p.datapath.clone();
    if p.crypto != "clear" {
        line += &format!(" {}", p.crypto);
    }
    if let Some(w) = p.workers {
        line += &format!(" {w}w");
    }
    line
}

pub fn draw(r: &SweepResults, path: &Path) -> Result<()> {
    let mut kinds: Vec<String> = Vec::new();
    for p in &r.points {
        if !kinds.contains(&line_of(p)) {
            kinds.push(line_of(p));
        }
    }
    let base = r
        .points
        .iter()
        .filter(|p| p.viewers == 1)
        .map(|p| p.bitrate_mbps)
        .next()
        .unwrap_or(4.0);
    let bitrate_viewers = r
        .points
        .iter()
        .filter(|p| (p.bitrate_mbps - base).abs() > 1e-9)
        .map(|p| p.viewers)
        .next()
        .unwrap_or(100);
    let root = SVGBackend::new(path, (1200, 1600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e:?}"))?;
    let areas = root.split_evenly((4, 2));
    panel(
        &areas[0],
        r,
        &kinds,
        &format!("Relay + softirq CPU, {base} Mbit/s"),
        "% of one core",
        true,
        None,
        base,
        &|p| p.relay_total_pct,
    )?;
    panel(
        &areas[1],
        r,
        &kinds,
        "CPU per viewer (relay + softirq)",
        "% of one core / viewer",
        true,
        None,
        base,
        &|p| p.relay_total_pct / p.viewers.max(1) as f64,
    )?;
    panel(
        &areas[2],
        r,
        &kinds,
        "Delivery (mean) vs viewers",
        "delivered / expected",
        false,
        None,
        base,
        &|p| p.delivery_mean,
    )?;
    panel(
        &areas[3],
        r,
        &kinds,
        "Delivery (worst viewer) vs viewers",
        "delivered / expected",
        false,
        None,
        base,
        &|p| p.delivery_min,
    )?;
    panel(
        &areas[4],
        r,
        &kinds,
        "Transit latency p99",
        "µs",
        true,
        None,
        base,
        &|p| p.latency_p99_us,
    )?;
    panel(
        &areas[5],
        r,
        &kinds,
        &format!("Relay + softirq CPU, {bitrate_viewers} viewers"),
        "% of one core",
        false,
        Some(bitrate_viewers),
        base,
        &|p| p.relay_total_pct,
    )?;
    panel(
        &areas[6],
        r,
        &kinds,
        "Relay process CPU per viewer",
        "% of one core / viewer",
        true,
        None,
        base,
        &|p| p.relay_pct_per_viewer,
    )?;
    panel(
        &areas[7],
        r,
        &kinds,
        "Relay syscalls per viewer",
        "syscalls/s / viewer",
        true,
        None,
        base,
        &|p| p.syscalls_per_viewer_s.unwrap_or(0.0),
    )?;
    root.present().map_err(|e| anyhow!("plot: {e:?}"))?;
    Ok(())
}

/// One panel of a time-series plot (the soak's): named lines of (seconds, value).
pub struct TimePanel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Lower end of the y axis (None: 0, or below the lowest value if that is negative).
    pub y_min: Option<f64>,
    /// Logarithmic y axis (values at or below zero are drawn at its bottom).
    pub log_y: bool,
}

/// Panels against time, two per row, in one SVG.
pub fn draw_time_series(panels: &[TimePanel], path: &Path) -> Result<()> {
    let rows = panels.len().div_ceil(2).max(1);
    let root = SVGBackend::new(path, (1200, 400 * rows as u32)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow!("plot: {e:?}");
    root.fill(&WHITE).map_err(e)?;
    let areas = root.split_evenly((rows, 2));
    for (p, area) in panels.iter().zip(areas.iter()) {
        let pts = || p.series.iter().flat_map(|(_, s)| s.iter());
        let x_max = pts().map(|&(x, _)| x).fold(1.0, f64::max);
        let y_hi = pts().map(|&(_, y)| y).fold(f64::MIN, f64::max);
        let y_lo = pts().map(|&(_, y)| y).fold(f64::MAX, f64::min);
        let (y_min, y_max) = if p.log_y {
            let lo = pts()
                .map(|&(_, y)| y)
                .filter(|y| *y > 0.0)
                .fold(f64::MAX, f64::min);
            let hi = y_hi.max(1e-9);
            let lo = p
                .y_min
                .unwrap_or(if lo < f64::MAX { lo * 0.5 } else { hi / 10.0 });
            (lo, (hi * 2.0).max(lo * 10.0))
        } else {
            let y_min = p.y_min.unwrap_or_else(|| y_lo.min(0.0));
            let y_max = if y_hi > y_min {
                y_hi + (y_hi - y_min) * 0.1
            } else {
                y_min + 1.0
            };
            (y_min, y_max)
        };
        let mut b = ChartBuilder::on(area);
        b.caption(&p.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(64);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc("time (s)")
                    .y_desc(p.y_label.as_str())
                    .draw()
                    .map_err(e)?;
                for (i, (name, s)) in p.series.iter().enumerate() {
                    let c = COLORS[i % COLORS.len()];
                    let s = s
                        .iter()
                        .map(|&(x, y)| (x, if p.log_y { y.max(y_min) } else { y }));
                    chart
                        .draw_series(LineSeries::new(s, c.stroke_width(2)))
                        .map_err(e)?
                        .label(name.as_str())
                        .legend(move |(x, yy)| PathElement::new(vec![(x, yy), (x + 16, yy)], c));
                }
                if p.series.len() > 1 || p.series.first().is_some_and(|(n, _)| !n.is_empty()) {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(e)?;
                }
            }};
        }
        if p.log_y {
            draw!(b
                .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
                .map_err(e)?);
        } else {
            draw!(b.build_cartesian_2d(0.0..x_max, y_min..y_max).map_err(e)?);
        }
    }
    root.present().map_err(|e| anyhow!("plot: {e:?}"))?;
    Ok(())
}
