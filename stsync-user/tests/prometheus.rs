//! deploy/prometheus checked with promtool, and a real Prometheus server scraping a
//! running relay with deploy/prometheus/rules.yml loaded (issue 18).

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
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
    let relay = Relay::start_default();
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

    p.stop();
    v1.stop();
    v2.stop();
    drop(prom);
}
