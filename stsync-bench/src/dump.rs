//! Checks what a third-party viewer (e.g. libsrt's srt-live-transmit) wrote to a file against
//! a generator run: same packets, byte for byte.

use crate::caller;
use crate::report::Report;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct DumpCheck {
    pub bytes: u64,
    pub packets: u64,
    /// Payloads that are exactly what the generator wrote for their index and time.
    pub intact: u64,
    pub first_index: Option<u64>,
    pub last_index: Option<u64>,
    /// Packets of the generator's measurement window `[first, end)` in the file.
    pub window_expected: u64,
    pub window_received: u64,
    pub window_duplicates: u64,
    pub out_of_order: u64,
    /// The generator's own viewers over the same window (mean and min unique packets).
    pub generator_viewers_mean: f64,
    pub generator_viewers_min: f64,
}

pub fn check(file: &Path, payload: usize, report: &Report) -> Result<DumpCheck> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let (s, e) = (report.window_first_index, report.window_end_index);
    let mut seen = vec![false; (e - s) as usize];
    let mut c = DumpCheck {
        bytes: data.len() as u64,
        packets: 0,
        intact: 0,
        first_index: None,
        last_index: None,
        window_expected: e - s,
        window_received: 0,
        window_duplicates: 0,
        out_of_order: 0,
        generator_viewers_mean: report.delivery.mean * (e - s) as f64,
        generator_viewers_min: report.delivery.min * (e - s) as f64,
    };
    let mut prev: Option<u64> = None;
    for p in data.chunks(payload) {
        c.packets += 1;
        if caller::payload_intact(p) {
            c.intact += 1;
        }
        let Some((idx, _)) = caller::read_payload(p) else {
            continue;
        };
        c.first_index.get_or_insert(idx);
        c.last_index = Some(idx);
        if prev.is_some_and(|q| idx <= q) {
            c.out_of_order += 1;
        }
        prev = Some(idx);
        if (s..e).contains(&idx) {
            let slot = &mut seen[(idx - s) as usize];
            if *slot {
                c.window_duplicates += 1;
            } else {
                *slot = true;
                c.window_received += 1;
            }
        }
    }
    Ok(c)
}
