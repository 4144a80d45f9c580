//! Prometheus text, read by the relay's own parser (`stsync_user::api::metrics`).

use super::*;

pub use stsync_user::api::metrics::{Sample, Scrape};

/// `text` parsed; panics on malformed text (the relay's encoder writes none).
pub fn prom_scrape(text: &str) -> Scrape {
    Scrape::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// All samples of `name` whose labels include every `(key, value)` in `labels`.
pub fn prom_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    prom_scrape(text).matching(name, labels).cloned().collect()
}

pub fn prom_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom_scrape(text).value(name, labels)
}

/// Sum over every sample of `name` (0 when absent).
pub fn prom_sum(text: &str, name: &str) -> f64 {
    prom_scrape(text).sum(name)
}

/// (has `# HELP name`, has `# TYPE name`).
pub fn prom_help_type(text: &str, name: &str) -> (bool, bool) {
    let s = prom_scrape(text);
    (s.has_help(name), s.has_type(name))
}

/// Every metric name of the README's table.
pub fn readme_metric_names() -> Vec<String> {
    let mut v = vec![
        "srt_connections_total".to_string(),
        "srt_connections_current".to_string(),
    ];
    for kind in ["ctrl", "data"] {
        for unit in ["packets", "bytes"] {
            for dir in ["sent", "recv", "lost"] {
                v.push(format!("srt_connection_{kind}_{unit}_{dir}"));
            }
        }
    }
    v.push("srt_connection_rtt".into());
    v.push("srt_connection_rtt_variance".into());
    v.push("srt_connection_playout_lead".into());
    v.push("srt_packets_dropped_total".into());
    v
}
