//! Reading the relay's Prometheus text (`GET /metrics`), for the bench and the tests.
//! The parsing is `prom_text_format_parser`'s; this flattens its metric families into
//! samples with a name, labels and an `f64`, which is what callers look values up by.

use prom_text_format_parser::{parse_scrape, Type, ValueType};
use std::collections::HashSet;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// As on its line: a histogram's `_bucket`, `_sum` and `_count` series keep theirs.
    pub name: String,
    /// Values unescaped (`\"`, `\\`, `\n`).
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample has every `(key, value)` of `labels` (and maybe more).
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// The text is not Prometheus' text format (the relay's always is: its encoder's).
#[derive(Debug, thiserror::Error)]
#[error("malformed Prometheus text: {0}")]
pub struct ParseError(String);

/// One scrape, parsed.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
    /// Metric names with a `# HELP` line, and with a `# TYPE` line.
    help: HashSet<String>,
    typed: HashSet<String>,
}

impl Scrape {
    /// The whole text or nothing: a malformed line fails it, so a broken exposition shows
    /// as an error instead of as missing series.
    pub fn parse(text: &str) -> Result<Scrape, ParseError> {
        // An exposition with no metric is valid; the parser wants at least one line.
        if text.trim().is_empty() {
            return Ok(Scrape::default());
        }
        let (families, err) = parse_scrape(text);
        if let Some(e) = err {
            return Err(ParseError(format!("{e:?}")));
        }
        let mut scrape = Scrape::default();
        for f in families {
            if f.help_desc.is_some() {
                scrape.help.insert(f.name.clone());
            }
            // The parser reports a family without a TYPE line as untyped.
            if f.kind != Type::Untyped {
                scrape.typed.insert(f.name.clone());
            }
            for s in f.samples {
                let name = match (s.value.value_type, f.kind) {
                    (ValueType::Sum, _) => format!("{}_sum", f.name),
                    (ValueType::Count, _) => format!("{}_count", f.name),
                    (ValueType::Sample, Type::Histogram) => format!("{}_bucket", f.name),
                    (ValueType::Sample, _) => f.name.clone(),
                };
                scrape.samples.push(Sample {
                    name,
                    labels: s
                        .labels
                        .iter()
                        .map(|l| (l.key.clone(), unescape(&l.value)))
                        .collect(),
                    value: s.value.value.as_f64(),
                });
            }
        }
        Ok(scrape)
    }

    /// Every sample, in the text's order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples of `name` that have every `(key, value)` of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has_labels(labels))
    }

    /// The first sample of `name` with `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).next().map(|s| s.value)
    }

    /// The sum over every sample of `name` (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.matching(name, &[]).map(|s| s.value).sum()
    }

    pub fn has_help(&self, name: &str) -> bool {
        self.help.contains(name)
    }

    /// Whether `name` has a `# TYPE` line (other than `untyped`, which reads the same as
    /// none).
    pub fn has_type(&self, name: &str) -> bool {
        self.typed.contains(name)
    }
}

/// The parser checks label values' escapes but hands them back escaped.
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(escaped) => out.push(escaped),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the relay's encoder writes it, plus what the format allows beyond that.
    const TEXT: &str = r#"# HELP srt_connections_current Connections open now, by mode.
# TYPE srt_connections_current gauge
srt_connections_current{mode="handshake"} 0
srt_connections_current{mode="request"} 3
# HELP srt_connection_playout_lead Play-out lead of a viewer, seconds.
# TYPE srt_connection_playout_lead gauge
srt_connection_playout_lead{id="7"} -0.0125
srt_connection_playout_lead{id="8"} 0.25
srt_packets_dropped_total{reason="a \"b\\c\nd",x="y,z}"} 1e3
weird +Inf 1700000000
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.5"} 4
rpc_seconds_sum 12
rpc_seconds_count 3
"#;

    #[test]
    fn api_metrics_reads_labels_help_type_and_signs() {
        let s = Scrape::parse(TEXT).unwrap();
        assert_eq!(
            s.value("srt_connections_current", &[("mode", "request")]),
            Some(3.0)
        );
        assert_eq!(s.sum("srt_connections_current"), 3.0);
        assert_eq!(
            s.value("srt_connection_playout_lead", &[("id", "7")]),
            Some(-0.0125)
        );
        assert!(s.has_help("srt_connections_current") && s.has_type("srt_connections_current"));
        assert!(!s.has_help("srt_packets_dropped_total") && !s.has_type("weird"));
        assert_eq!(
            s.value("srt_packets_dropped_total", &[("reason", "a \"b\\c\nd")]),
            Some(1000.0)
        );
        let dropped = s.matching("srt_packets_dropped_total", &[]).next().unwrap();
        assert_eq!(dropped.label("x"), Some("y,z}"));
        assert_eq!(s.value("weird", &[]), Some(f64::INFINITY));
        assert_eq!(s.value("rpc_seconds_sum", &[]), Some(12.0));
        assert_eq!(s.value("rpc_seconds_count", &[]), Some(3.0));
        assert_eq!(s.value("rpc_seconds", &[("quantile", "0.5")]), Some(4.0));
        assert_eq!(s.samples().len(), 9);
    }

    #[test]
    fn api_metrics_refuses_malformed_text() {
        assert!(Scrape::parse("srt_connections_total 1\nnot a sample line {\n").is_err());
        assert!(Scrape::parse("").unwrap().samples().is_empty());
    }
}
