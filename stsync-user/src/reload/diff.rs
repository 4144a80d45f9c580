//! A reload's plan: what differs between the running config.json and the new one, and
//! what runs once it is applied. Pure: `crate::reload` applies it.
//!
//! Applied live (new connections see it; open ones of unchanged streams are not touched):
//! streams added and removed, a stream's token, name, delay, passphrases and key length,
//! `admin_token`, and the relay's connection limits, idle timeout and session key TTL.
//! Everything else is read at start only: the plan keeps the running value and names the
//! field, so the next reload names it again until a restart.

use crate::config::{Config, StreamConfig};

/// What a reload changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Streams to add, as the new file has them.
    pub added: Vec<StreamConfig>,
    /// Ids of streams to remove.
    pub removed: Vec<String>,
    /// Streams kept whose live fields changed.
    pub updated: Vec<StreamChange>,
    /// Relay-wide fields applied live (config.json names).
    pub settings: Vec<&'static str>,
    /// Fields that changed but apply only at a restart (config.json names, a stream's as
    /// `streams[ID].field`): the running value stays.
    pub restart: Vec<String>,
    /// The config that runs once the plan is applied: the new one, but for `restart`.
    pub running: Config,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamChange {
    pub id: String,
    /// config.json names of the fields that changed.
    pub fields: Vec<&'static str>,
    /// The stream as it runs after the change.
    pub cfg: StreamConfig,
}

impl StreamChange {
    pub fn changed(&self, field: &str) -> bool {
        self.fields.contains(&field)
    }
}

impl Plan {
    /// Nothing to apply and nothing to report.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.updated.is_empty()
            && self.settings.is_empty()
            && self.restart.is_empty()
    }

    /// One line for the log: `added=[3] removed=[2] updated=[1: token, delay_ms] ...`.
    pub fn summary(&self) -> String {
        let added: Vec<&str> = self.added.iter().map(|s| s.id.as_str()).collect();
        let updated: Vec<String> = self
            .updated
            .iter()
            .map(|u| format!("{}: {}", u.id, u.fields.join(", ")))
            .collect();
        format!(
            "added=[{}] removed=[{}] updated=[{}] settings=[{}] restart_required=[{}]",
            added.join(", "),
            self.removed.join(", "),
            updated.join("; "),
            self.settings.join(", "),
            self.restart.join(", "),
        )
    }
}

/// Compares `old` (running) with `new` (just loaded and validated; stream ids normalised).
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut running = new.clone();
    let mut restart = Vec::new();
    let mut settings = Vec::new();
    // Each field named once, so a field added to `Config` and forgotten here is at least
    // not applied half: `restart_fields_cover_the_rest` lists what is left.
    macro_rules! at_restart {
        ($($f:ident),* $(,)?) => {$(
            if old.$f != new.$f {
                restart.push(stringify!($f).to_string());
                running.$f = old.$f.clone();
            }
        )*};
    }
    macro_rules! live {
        ($($f:ident),* $(,)?) => {$(
            if old.$f != new.$f {
                settings.push(stringify!($f));
            }
        )*};
    }
    at_restart!(
        srt_listen,
        http_listen,
        workers,
        latency_ms,
        buffer_packets,
        http_header_timeout_ms,
        http_idle_timeout_ms,
        http_shutdown_timeout_ms,
        http_max_connections_per_ip,
        http_connections_per_ip_per_sec,
        kmrefreshrate,
        kmpreannounce,
        tls_cert,
        tls_key,
        key_secret,
        kernel_streams,
    );
    live!(
        max_connections,
        max_viewers_per_stream,
        max_connections_per_ip,
        handshakes_per_ip_per_sec,
        idle_timeout_ms,
        session_ttl_secs,
        admin_token,
        metrics_max_connections,
    );

    let find = |list: &[StreamConfig], id: &str| list.iter().position(|s| s.id == id);
    let removed: Vec<String> = old
        .streams
        .iter()
        .filter(|s| find(&new.streams, &s.id).is_none())
        .map(|s| s.id.clone())
        .collect();
    let mut added = Vec::new();
    let mut updated = Vec::new();
    let mut streams = Vec::with_capacity(new.streams.len());
    for n in &new.streams {
        let Some(o) = find(&old.streams, &n.id).map(|i| &old.streams[i]) else {
            // An edge stream's pull is set up at start (the workers' upstream tables).
            if !n.upstream.is_empty() {
                restart.push(format!("streams[{}].upstream", n.id));
                continue;
            }
            added.push(n.clone());
            streams.push(n.clone());
            continue;
        };
        let mut s = n.clone();
        if o.upstream != n.upstream || o.pull != n.pull {
            restart.push(format!("streams[{}].upstream", n.id));
            s.upstream = o.upstream.clone();
            s.pull = o.pull;
        }
        let mut fields = Vec::new();
        macro_rules! stream_live {
            ($($f:ident),*) => {$(
                if o.$f != n.$f {
                    fields.push(stringify!($f));
                }
            )*};
        }
        stream_live!(
            name,
            token,
            delay_ms,
            publish_passphrase,
            view_passphrase,
            pbkeylen
        );
        if !fields.is_empty() {
            updated.push(StreamChange {
                id: n.id.clone(),
                fields,
                cfg: s.clone(),
            });
        }
        streams.push(s);
    }
    running.streams = streams;
    Plan {
        added,
        removed,
        updated,
        settings,
        restart,
        running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "7f3a9c21e4b8d05f6a2c";
    const B: &str = "c0ffee9a8b7d6e5f4a3b";

    fn cfg(extra: &str, streams: &str) -> Config {
        let text =
            format!(r#"{{"http_listen": "127.0.0.1:9998", {extra} "streams": [{streams}]}}"#);
        Config::parse(&text).unwrap()
    }

    fn stream(id: &str, token: &str, more: &str) -> String {
        format!(r#"{{"id": "{id}", "token": "{token}" {more}}}"#)
    }

    #[test]
    fn the_same_file_is_an_empty_plan() {
        let c = cfg("", &stream("1", A, ""));
        let p = plan(&c, &c.clone());
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.running, c);
    }

    #[test]
    fn streams_added_removed_and_updated() {
        let old = cfg("", &[stream("1", A, ""), stream("2", A, "")].join(","));
        let new = cfg(
            "",
            &[
                stream("1", B, r#", "delay_ms": 500"#),
                stream("3", A, r#", "view_passphrase": "0123456789ab""#),
            ]
            .join(","),
        );
        let p = plan(&old, &new);
        assert_eq!(p.removed, ["2"]);
        assert_eq!(p.added.len(), 1);
        assert_eq!(p.added[0].id, "3");
        assert_eq!(p.updated.len(), 1);
        assert_eq!(p.updated[0].id, "1");
        assert_eq!(p.updated[0].fields, ["token", "delay_ms"]);
        assert!(p.settings.is_empty() && p.restart.is_empty(), "{p:?}");
        assert_eq!(p.running, new);
        assert_eq!(
            p.summary(),
            "added=[3] removed=[2] updated=[1: token, delay_ms] settings=[] restart_required=[]"
        );
    }

    #[test]
    fn ids_compare_normalised() {
        let old = cfg("", &stream("0A", A, ""));
        let new = cfg("", &stream("a", A, ""));
        assert!(plan(&old, &new).is_empty());
    }

    #[test]
    fn limits_and_admin_token_apply_live() {
        let old = cfg("", &stream("1", A, ""));
        let new = cfg(
            &format!(
                r#""max_connections": 7, "max_connections_per_ip": 3, "idle_timeout_ms": 4000,
                "admin_token": "{B}", "metrics_max_connections": 50,"#
            ),
            &stream("1", A, ""),
        );
        let p = plan(&old, &new);
        assert_eq!(
            p.settings,
            [
                "max_connections",
                "max_connections_per_ip",
                "idle_timeout_ms",
                "admin_token",
                "metrics_max_connections"
            ]
        );
        assert!(p.restart.is_empty());
        assert_eq!(p.running, new);
    }

    #[test]
    fn restart_fields_keep_the_running_value() {
        let old = cfg("", &stream("1", A, ""));
        let new = Config::parse(&format!(
            r#"{{"http_listen": "127.0.0.1:9998", "srt_listen": "127.0.0.1:9001", "workers": 3, "latency_ms": 200,
            "key_secret": "{A}{B}", "kernel_streams": 8, "max_connections": 9,
            "streams": [{}]}}"#,
            stream("1", A, "")
        ))
        .unwrap();
        let p = plan(&old, &new);
        assert_eq!(
            p.restart,
            [
                "srt_listen",
                "workers",
                "latency_ms",
                "key_secret",
                "kernel_streams"
            ]
        );
        assert_eq!(p.settings, ["max_connections"]);
        assert_eq!(p.running.srt_listen, old.srt_listen);
        assert_eq!(p.running.workers, None);
        assert_eq!(p.running.key_secret, None);
        assert_eq!(p.running.max_connections, 9);
        // Applied, the plan runs: the same file again names only what still waits.
        let again = plan(&p.running, &new);
        assert_eq!(again.restart, p.restart);
        assert!(again.settings.is_empty());
    }

    #[test]
    fn edge_streams_change_only_at_a_restart() {
        let up = r#", "upstream": [{"srt": "h:1", "api": "http://h:2", "token": "0a1b2c3d4e5f6a7b8c9d"}]"#;
        let old = cfg("", &stream("1", A, ""));
        // A new edge stream is not added; an edge stream's upstream does not change.
        let new = cfg("", &[stream("1", A, up), stream("2", A, up)].join(","));
        let p = plan(&old, &new);
        assert!(p.added.is_empty());
        assert_eq!(p.restart, ["streams[1].upstream", "streams[2].upstream"]);
        assert_eq!(p.running.streams.len(), 1);
        assert!(p.running.streams[0].upstream.is_empty());
        assert!(p.updated.is_empty());
    }
}
