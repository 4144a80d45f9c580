//! deploy/prometheus checked with promtool, and a real Prometheus server scraping a
//! running relay with deploy/prometheus/rules.yml loaded; every panel and variable of the
//! Grafana dashboard (deploy/grafana/stsync.json) evaluated against it (issue 18).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn dashboard() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/stsync.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}"))
}

/// Each query panel with its title and its targets' expressions.
fn panels(d: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let exprs = p["targets"].as_array().map_or(vec![], |t| {
                t.iter()
                    .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
                    .collect()
            });
            (p["title"].as_str().unwrap_or_default().to_string(), exprs)
        })
        .collect()
}

/// What Grafana would send for `expr` with the stream `stream` of relay `instance` chosen.
fn as_grafana_sends(expr: &str, instance: &str, stream: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$instance", &instance.replace('.', "\\\\."))
        .replace("$stream", stream)
}

/// Every panel has a title, a description and targets on the dashboard's Prometheus
/// variable; ids are unique; panels sit inside the 24-column grid without overlapping;
/// every variable a query uses is defined.
#[test]
fn grafana_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "stsync-relay");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "stream"]);
    let mut ids = std::collections::HashSet::new();
    let mut cells = std::collections::HashSet::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id repeated"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(!title.is_empty() && p["description"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = std::collections::HashSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId repeated"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            for var in expr.split('$').skip(1) {
                let name: String = var
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name == "__rate_interval" || vars.contains(&name.as_str()),
                    "{title}: unknown variable ${name} in {expr}"
                );
            }
        }
    }
    assert!(panels(&d).len() >= 15, "{} panels", panels(&d).len());
}

/// `promtool args...` in deploy/prometheus; panics with promtool's output on failure.
fn promtool(args: &[&str]) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e} (apt-get install prometheus)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn deploy_files_pass_promtool() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "rules.yml"]);
    assert!(rules.contains("SUCCESS: 5 rules found"), "{rules}");
    promtool(&["test", "rules", "rules_test.yml"]);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn enc(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on its own port and storage, killed on drop (Proc).
struct Prom {
    url: String,
    proc: Proc,
}

impl Prom {
    fn start(dir: &TempDir, relay_http: std::net::SocketAddrV4) -> Prom {
        let rules = deploy_dir().join("rules.yml");
        let cfg = dir.file("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: stsync\n    metrics_path: /v1/metrics\n    \
                 scrape_interval: 1s\n    scrape_timeout: 900ms\n    \
                 static_configs:\n      - targets: [\"{relay_http}\"]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let data = dir.file("tsdb");
        let mut cmd = Command::new(tool("prometheus"));
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.file("prometheus.log")).unwrap());
        let proc = Proc::spawn(
            "prometheus",
            cmd,
            libc::SIGTERM,
            Some(dir.file("prometheus.log")),
        );
        let mut p = Prom {
            url: format!("http://127.0.0.1:{port}"),
            proc,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            http("GET", &format!("{}/-/ready", p.url), &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ready && p.proc.running(),
            "prometheus not ready: {}",
            p.proc.stderr_text()
        );
        p
    }

    /// `/api/v1/query`: the instant vector as (labels, value).
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let r = http(
            "GET",
            &format!("{}/api/v1/query?query={}", self.url, enc(q)),
            &[],
        )
        .unwrap_or_else(|e| panic!("query {q}: {e}"));
        assert_eq!(r.status, 200, "query {q}: {r:?}");
        let v = r.json();
        assert_eq!(v["status"], "success", "query {q}: {}", r.body);
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|s| {
                let x = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                (s["metric"].clone(), x)
            })
            .collect()
    }

    /// The single value of `q`, once Prometheus has one equal to `want` (bounded wait).
    fn wait_value(&self, q: &str, want: f64, timeout: Duration) {
        let mut last = vec![];
        let ok = wait_until(timeout, || {
            last = self.query(q);
            last.len() == 1 && last[0].1 == want
        });
        assert!(ok, "{q}: want {want}, Prometheus has {last:?}");
    }
}

#[test]
fn real_prometheus_scrapes_the_relay() {
    let c = clip();
    // A delay on the stream, so the dashboard's delay panel has a value to show.
    let relay = Relay::start(RelayOpts {
        stream_delays: vec![("1".into(), 300)],
        ..RelayOpts::default()
    });
    let dir = TempDir::new("prometheus");
    let prom = Prom::start(&dir, relay.http);
    let mut v1 = SltViewer::start(&dir, "slt1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "slt2", &relay.viewer_url("1"));
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    for v in [&mut v1, &mut v2] {
        assert!(
            v.wait_bytes(100_000, Duration::from_secs(5)),
            "viewer got no data: {}",
            v.stderr()
        );
    }
    let t = Duration::from_secs(10);
    prom.wait_value(r#"up{job="stsync"}"#, 1.0, t);
    prom.wait_value(
        r#"srt_connections_current{job="stsync",mode="request"}"#,
        2.0,
        t,
    );
    prom.wait_value(
        r#"srt_connections_current{job="stsync",mode="publish"}"#,
        1.0,
        t,
    );
    // The rules file is loaded and healthy.
    let rules = http("GET", &format!("{}/api/v1/rules", prom.url), &[]).unwrap();
    assert!(
        rules.body.contains("StsyncPublisherGone") && !rules.body.contains("\"health\":\"err\""),
        "{}",
        rules.body
    );

    // The publisher's packet counter: Prometheus' last scrape lies between the relay's
    // own value a few scrapes earlier and its value now.
    let name = "srt_connection_data_packets_recv";
    let before = relay.metrics();
    let started = Instant::now();
    sleep_secs(3.0);
    let series = prom.query(&format!("{name}{{job=\"stsync\"}}"));
    let now = relay.metrics();
    let (labels, scraped) = series
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in Prometheus"));
    let id = labels["id"].as_str().expect("id label").to_string();
    let r0 = prom_value(&before, name, &[("id", &id)]).unwrap_or(0.0);
    let r1 = prom_value(&now, name, &[("id", &id)]).expect("relay has the series");
    eprintln!(
        "{name}{{id={id}}}: relay {r0} -> {r1} over {:?}, Prometheus {scraped}",
        started.elapsed()
    );
    assert!(scraped > 0.0, "{name}{{id={id}}} is 0 in Prometheus");
    assert!(
        r0 <= scraped && scraped <= r1,
        "{name}{{id={id}}}: Prometheus {scraped} outside the relay's [{r0}, {r1}]"
    );

    check_dashboard(&prom, relay.http, "1");

    p.stop();
    v1.stop();
    v2.stop();
    drop(prom);
}

/// Every panel query of the dashboard, as Grafana sends it for the live stream, returns
/// series from the real Prometheus; the variables' queries offer the relay and the stream;
/// the headline panels have the relay's values.
fn check_dashboard(prom: &Prom, relay_http: std::net::SocketAddrV4, stream: &str) {
    let instance = relay_http.to_string();
    // Rates over 10 s need 10 s of scrapes.
    sleep_secs(4.0);
    let d = dashboard();
    for (var, label) in [("instance", "instance"), ("stream", "stream")] {
        let def = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == var)
            .unwrap()["definition"]
            .as_str()
            .unwrap()
            .to_string();
        // label_values(<selector>, <label>) as Grafana asks it: the label's values on
        // the series the selector matches.
        let selector = def
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| as_grafana_sends(sel, &instance, stream))
            .unwrap_or_else(|| panic!("variable {var}: {def}"));
        let r = http(
            "GET",
            &format!(
                "{}/api/v1/label/{label}/values?match[]={}",
                prom.url,
                enc(&selector)
            ),
            &[],
        )
        .unwrap();
        let values = r.json()["data"].clone();
        let want = if var == "instance" {
            instance.as_str()
        } else {
            stream
        };
        assert!(
            values
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == want)),
            "variable {var} ({def}) offers {values}, not {want}"
        );
    }
    let mut empty = vec![];
    let mut answered = 0;
    for (title, exprs) in panels(&d) {
        for expr in exprs {
            let q = as_grafana_sends(&expr, &instance, stream);
            let series = prom.query(&q);
            if series.is_empty() {
                empty.push(format!("{title}: {q}"));
            }
            answered += 1;
        }
    }
    assert!(
        empty.is_empty(),
        "panel queries with no series for a live stream: {empty:#?}"
    );
    eprintln!("[result] grafana: {answered} panel queries answered for stream {stream}");
    // The headline values: what the relay itself says.
    let one = |title: &str| -> f64 {
        let (_, exprs) = panels(&d).into_iter().find(|(t, _)| t == title).unwrap();
        let s = prom.query(&as_grafana_sends(&exprs[0], &instance, stream));
        assert_eq!(s.len(), 1, "{title}: {s:?}");
        s[0].1
    };
    assert_eq!(one("Streams live"), 1.0);
    assert_eq!(one("Viewers"), 2.0);
    assert!(one("Ingest bitrate") > 100_000.0, "the clip is ~1 Mbit/s");
    assert_eq!(one("Delay"), 0.3, "configured 300 ms");
    let (_, exprs) = panels(&d)
        .into_iter()
        .find(|(t, _)| t == "Viewers by datapath")
        .unwrap();
    let by_datapath = prom.query(&as_grafana_sends(&exprs[0], &instance, stream));
    assert_eq!(
        by_datapath.iter().map(|s| s.1).sum::<f64>(),
        2.0,
        "viewers by datapath: {by_datapath:?}"
    );
    let share = one("Kernel share");
    assert!((0.0..=1.0).contains(&share), "kernel share {share}");
}
