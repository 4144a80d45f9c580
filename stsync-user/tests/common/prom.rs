//! Prometheus text parsing.

use super::*;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

pub fn parse_prom(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        let mut labels = Vec::new();
        let mut rest = rest;
        if rest.starts_with('{') {
            let b = rest.as_bytes();
            let mut i = 1;
            loop {
                while i < b.len() && (b[i] == b' ' || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    i += 1;
                    break;
                }
                let ks = i;
                while i < b.len() && b[i] != b'=' {
                    i += 1;
                }
                let key = rest[ks..i].trim().to_string();
                i += 1; // '='
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                }
                let mut val = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                        val.push(match b[i] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    } else {
                        val.push(b[i] as char);
                    }
                    i += 1;
                }
                i += 1; // closing quote
                labels.push((key, val));
            }
            rest = &rest[i.min(rest.len())..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(value) = value {
            out.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
    }
    out
}

/// All samples of `name` whose labels include every `(key, value)` in `labels`.
pub fn prom_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<Sample> {
    parse_prom(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

pub fn prom_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    prom_samples(text, name, labels).first().map(|s| s.value)
}

/// Sum over every sample of `name` (0 when absent).
pub fn prom_sum(text: &str, name: &str) -> f64 {
    prom_samples(text, name, &[]).iter().map(|s| s.value).sum()
}

/// (has `# HELP name`, has `# TYPE name`).
pub fn prom_help_type(text: &str, name: &str) -> (bool, bool) {
    let help = text
        .lines()
        .any(|l| l.starts_with(&format!("# HELP {name} ")));
    let ty = text
        .lines()
        .any(|l| l.starts_with(&format!("# TYPE {name} ")));
    (help, ty)
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
