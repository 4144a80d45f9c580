//! Relay.

use super::*;

#[derive(Clone, Debug)]
pub struct RelayOpts {
    pub session_ttl_secs: Option<u64>,
    pub latency_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_viewers_per_stream: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub handshakes_per_ip_per_sec: Option<u64>,
    pub buffer_packets: Option<u64>,
    /// Run the relay inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Address the relay's SRT socket binds (and clients dial). HTTP always binds
    /// 127.0.0.1 (inside the namespace, if any).
    pub srt_ip: Ipv4Addr,
    /// Bind the SRT socket here instead of `srt_ip` (e.g. 0.0.0.0 for a relay reached on
    /// several interfaces; clients then pick an address with `Relay::url_at`).
    pub srt_bind: Option<Ipv4Addr>,
    /// `--datapath` (auto, ebpf, userspace). Default: `STSYNC_DATAPATH` if set, else the
    /// daemon's own default.
    pub datapath: Option<String>,
    /// `delay_ms` of streams in config.json.
    pub stream_delays: Vec<(String, u64)>,
    /// `RUST_LOG` for the relay (default: `STSYNC_RELAY_LOG` if set, else `info`).
    pub rust_log: Option<String>,
    /// (stream, publish_passphrase, view_passphrase) in config.json.
    pub passphrases: Vec<(String, Option<String>, Option<String>)>,
    pub http_header_timeout_ms: Option<u64>,
    pub http_idle_timeout_ms: Option<u64>,
    pub http_shutdown_timeout_ms: Option<u64>,
    /// RLIMIT_NOFILE (soft and hard) the relay runs under.
    pub nofile: Option<u64>,
    /// The relay's schedule for encrypted viewers' keys (config.json).
    pub kmrefreshrate: Option<u64>,
    pub kmpreannounce: Option<u64>,
    /// (certificate, key) PEM texts: written next to config.json as `cert.pem` and
    /// `key.pem`, named there by those relative paths, and the API is served over HTTPS.
    pub tls: Option<(String, String)>,
    /// `--workers`. Default: `STSYNC_WORKERS` if set, else the daemon's own default (the
    /// cores it may use).
    pub workers: Option<u32>,
    /// Bind the HTTP API here instead of 127.0.0.1 (an edge in another namespace mints its
    /// keys there).
    pub http_ip: Option<Ipv4Addr>,
    /// (stream, config.json `upstream` entries: see `Relay::upstream_entry`): an edge.
    pub upstream: Vec<(String, Vec<serde_json::Value>)>,
    /// Streams whose edge pulls always (`"pull": "always"`), viewers or not.
    pub pull_always: Vec<String>,
    /// Use these ports instead of free ones (a relay started again where it was).
    pub ports: Option<(u16, u16)>,
    /// Use these stream tokens instead of random ones.
    pub tokens: Option<HashMap<String, String>>,
    /// config.json `key_secret`: the relay mints signed session keys, and takes those of
    /// any relay with the same secret.
    pub key_secret: Option<String>,
    /// config.json's `srt_listen` host instead of `srt_bind`/`srt_ip` (e.g. `[::]`, with the
    /// port picked as usual); clients still dial `srt_ip`.
    pub srt_listen_ip: Option<std::net::IpAddr>,
    /// config.json's `http_listen` host instead of `http_ip` (e.g. `[::]`); the harness's
    /// own requests still go to `http_ip` (default 127.0.0.1).
    pub http_listen_ip: Option<std::net::IpAddr>,
    /// `--log-format` (text, json). Default: the daemon's own (text).
    pub log_format: Option<String>,
    /// config.json `admin_token` (none by default).
    pub admin_token: Option<String>,
    /// config.json `metrics_max_connections`.
    pub metrics_max_connections: Option<u64>,
    /// Runs the relay through this command line (e.g. `setpriv ... --`), the relay's own
    /// path and arguments appended (not with `netns`).
    pub wrapper: Option<Vec<String>>,
    /// config.json `kernel_streams` (rows of the kernel path's stream table).
    pub kernel_streams: Option<u64>,
}

impl Default for RelayOpts {
    fn default() -> Self {
        RelayOpts {
            session_ttl_secs: None,
            latency_ms: None,
            idle_timeout_ms: None,
            max_connections: None,
            max_viewers_per_stream: None,
            max_connections_per_ip: None,
            handshakes_per_ip_per_sec: None,
            buffer_packets: None,
            netns: None,
            srt_ip: Ipv4Addr::LOCALHOST,
            srt_bind: None,
            datapath: std::env::var("STSYNC_DATAPATH")
                .ok()
                .filter(|d| !d.is_empty()),
            stream_delays: Vec::new(),
            rust_log: None,
            passphrases: Vec::new(),
            kmrefreshrate: None,
            kmpreannounce: None,
            http_header_timeout_ms: None,
            http_idle_timeout_ms: None,
            http_shutdown_timeout_ms: None,
            nofile: None,
            tls: None,
            workers: std::env::var("STSYNC_WORKERS")
                .ok()
                .and_then(|w| w.parse().ok()),
            http_ip: None,
            upstream: Vec::new(),
            pull_always: Vec::new(),
            ports: None,
            tokens: None,
            key_secret: None,
            srt_listen_ip: None,
            http_listen_ip: None,
            log_format: None,
            admin_token: None,
            metrics_max_connections: None,
            wrapper: None,
            kernel_streams: None,
        }
    }
}

pub struct Relay {
    pub srt: SocketAddrV4,
    pub http: SocketAddrV4,
    pub tokens: HashMap<String, String>,
    pub netns: Option<String>,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    /// With `RelayOpts::tls`: the certificate file, which the harness's clients trust.
    pub tls_cert: Option<PathBuf>,
    pub dir: TempDir,
    proc: Proc,
    /// What it was started with, its ports and tokens included (`restart`).
    opts: RelayOpts,
}

pub(crate) fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Relay {
    pub fn start_default() -> Relay {
        Relay::start(RelayOpts::default())
    }

    pub fn start(opts: RelayOpts) -> Relay {
        let dir = TempDir::new("relay");
        let (srt_port, http_port) = opts
            .ports
            .unwrap_or_else(|| (free_udp_port(), free_tcp_port()));
        let srt = SocketAddrV4::new(opts.srt_ip, srt_port);
        let http = SocketAddrV4::new(opts.http_ip.unwrap_or(Ipv4Addr::LOCALHOST), http_port);
        let tokens = opts.tokens.clone().unwrap_or_else(|| {
            HashMap::from([
                (
                    "1".to_string(),
                    format!("tok-one-{:016x}", rand::random::<u64>()),
                ),
                (
                    "2".to_string(),
                    format!("tok-two-{:016x}", rand::random::<u64>()),
                ),
            ])
        });
        let mut cfg = serde_json::json!({
            "srt_listen": match opts.srt_listen_ip {
                Some(ip) => std::net::SocketAddr::new(ip, srt.port()).to_string(),
                None => SocketAddrV4::new(opts.srt_bind.unwrap_or(opts.srt_ip), srt.port()).to_string(),
            },
            "http_listen": match opts.http_listen_ip {
                Some(ip) => std::net::SocketAddr::new(ip, http.port()).to_string(),
                None => http.to_string(),
            },
            "streams": [
                { "id": "1", "name": "Stream one", "token": tokens["1"] },
                { "id": "2", "name": "Stream two", "token": tokens["2"] },
            ],
        });
        for (stream, delay) in &opts.stream_delays {
            for s in cfg["streams"].as_array_mut().unwrap() {
                if s["id"] == stream.as_str() {
                    s["delay_ms"] = serde_json::json!(delay);
                }
            }
        }
        for (stream, upstream) in &opts.upstream {
            for s in cfg["streams"].as_array_mut().unwrap() {
                if s["id"] == stream.as_str() {
                    s["upstream"] = serde_json::json!(upstream);
                    if opts.pull_always.contains(stream) {
                        s["pull"] = serde_json::json!("always");
                    }
                }
            }
        }
        for (stream, publish, view) in &opts.passphrases {
            for s in cfg["streams"].as_array_mut().unwrap() {
                if s["id"] == stream.as_str() {
                    s["publish_passphrase"] = serde_json::json!(publish);
                    s["view_passphrase"] = serde_json::json!(view);
                }
            }
        }
        let m = cfg.as_object_mut().unwrap();
        for (k, v) in [
            ("session_ttl_secs", opts.session_ttl_secs),
            ("latency_ms", opts.latency_ms),
            ("idle_timeout_ms", opts.idle_timeout_ms),
            ("max_connections", opts.max_connections),
            ("max_viewers_per_stream", opts.max_viewers_per_stream),
            ("max_connections_per_ip", opts.max_connections_per_ip),
            ("handshakes_per_ip_per_sec", opts.handshakes_per_ip_per_sec),
            ("buffer_packets", opts.buffer_packets),
            ("http_header_timeout_ms", opts.http_header_timeout_ms),
            ("http_idle_timeout_ms", opts.http_idle_timeout_ms),
            ("http_shutdown_timeout_ms", opts.http_shutdown_timeout_ms),
            ("kmrefreshrate", opts.kmrefreshrate),
            ("kmpreannounce", opts.kmpreannounce),
            ("metrics_max_connections", opts.metrics_max_connections),
            ("kernel_streams", opts.kernel_streams),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), serde_json::json!(v));
            }
        }
        if let Some(secret) = &opts.key_secret {
            m.insert("key_secret".into(), secret.as_str().into());
        }
        if let Some(t) = &opts.admin_token {
            m.insert("admin_token".into(), t.as_str().into());
        }
        let tls_cert = opts.tls.as_ref().map(|(cert, key)| {
            fs::write(dir.file("cert.pem"), cert).unwrap();
            fs::write(dir.file("key.pem"), key).unwrap();
            m.insert("tls_cert".into(), "cert.pem".into());
            m.insert("tls_key".into(), "key.pem".into());
            dir.file("cert.pem")
        });
        let config_path = dir.file("config.json");
        fs::write(&config_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let log_path = dir.file("relay.log");
        let log = out_file(&log_path);
        let mut cmd = match &opts.wrapper {
            Some(w) => {
                let mut c = Command::new(&w[0]);
                c.args(&w[1..]).arg(tool("relay"));
                c
            }
            None => command(opts.netns.as_deref(), "relay"),
        };
        if let Some(d) = &opts.datapath {
            cmd.args(["--datapath", d]);
        }
        if let Some(f) = &opts.log_format {
            cmd.args(["--log-format", f]);
        }
        if let Some(w) = opts.workers {
            cmd.args(["--workers", &w.to_string()]);
        }
        cmd.arg("--config")
            .arg(&config_path)
            .env(
                "RUST_LOG",
                opts.rust_log
                    .clone()
                    .or_else(|| std::env::var("STSYNC_RELAY_LOG").ok())
                    .unwrap_or_else(|| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = opts.nofile {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let proc = Proc::spawn("stsync-proxy", cmd, libc::SIGTERM, Some(log_path.clone()));
        let opts = RelayOpts {
            ports: Some((srt.port(), http.port())),
            tokens: Some(tokens.clone()),
            ..opts
        };
        let mut relay = Relay {
            netns: opts.netns.clone(),
            opts,
            srt,
            http,
            tokens,
            log_path,
            config_path,
            tls_cert,
            dir,
            proc,
        };
        let ok = wait_until(Duration::from_secs(10), || {
            if !relay.proc.running() {
                return true;
            }
            matches!(relay.get("/v1/health"), Ok(r) if r.status == 200)
        });
        if let Some(st) = relay.proc.status() {
            panic!(
                "stsync-proxy exited at start ({st}); log:\n{}",
                tail_lines(&relay.log(), 60)
            );
        }
        assert!(
            ok,
            "stsync-proxy did not answer GET /v1/health with 200 within 10 s; log:\n{}",
            tail_lines(&relay.log(), 60)
        );
        relay
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn status(&mut self) -> Option<ExitStatus> {
        self.proc.status()
    }

    /// This relay as an edge's `upstream` entry for config.json: its SRT address (as
    /// clients dial it), API and the stream's token.
    pub fn upstream_entry(&self, stream: &str) -> serde_json::Value {
        serde_json::json!({
            "srt": self.srt.to_string(),
            "api": self.api_url(),
            "token": self.token(stream),
        })
    }

    /// Kills it with SIGKILL (no SHUTDOWN to anyone) and waits for the exit.
    pub fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(5));
    }

    /// The same relay started again (same ports, tokens and options; a fresh temp dir and
    /// log), as a supervisor restarts it.
    pub fn restart(&self) -> Relay {
        Relay::start(self.opts.clone())
    }

    /// SIGTERM and wait up to `timeout` for the exit (no SIGKILL).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(timeout)
    }

    /// Each accepted connection's mode (`publish`, `request`) and worker, in order, from
    /// the log.
    pub fn accepted(&self) -> Vec<(String, u32)> {
        let field = |line: &str, k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|v| v.trim_matches('"').to_string())
        };
        self.log()
            .lines()
            .filter(|l| l.contains("connection accepted"))
            .filter_map(|l| {
                let mode = field(l, "mode=")?;
                let worker = field(l, "worker=")?.parse().ok()?;
                Some((mode, worker))
            })
            .collect()
    }

    pub fn log(&self) -> String {
        strip_ansi(&read_lossy(&self.log_path))
    }

    /// Rejection codes the relay sent, each as often as it was sent (from
    /// `srt_handshake_rejections_total{code}`; its log has only the first per address per
    /// 10 s at info).
    pub fn reject_codes(&self) -> Vec<u32> {
        let Ok(m) = self.api(None, Client::metrics_text) else {
            return Vec::new();
        };
        let mut codes = Vec::new();
        for s in prom_samples(&m, "srt_handshake_rejections_total", &[]) {
            if let Some(code) = s.label("code").and_then(|c| c.parse::<u32>().ok()) {
                codes.extend(std::iter::repeat_n(code, s.value as usize));
            }
        }
        codes
    }

    /// Waits (up to `within`) for `srt_connections_current{mode}` to read `n`.
    pub fn wait_connections(&self, mode: &str, n: usize, within: Duration) -> bool {
        wait_until(within, || {
            self.metric("srt_connections_current", &[("mode", mode)]) == Some(n as f64)
        })
    }

    // --- config.json, live ---

    /// config.json as the relay was started with it, or as last written.
    pub fn config(&self) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(&self.config_path).unwrap()).unwrap()
    }

    /// Rewrites config.json (the relay reads it again on SIGHUP or `POST /v1/reload`);
    /// the harness's tokens follow the file's streams.
    pub fn write_config(&mut self, cfg: &serde_json::Value) {
        self.write_config_text(&serde_json::to_string_pretty(cfg).unwrap());
        if let Some(streams) = cfg["streams"].as_array() {
            self.tokens = streams
                .iter()
                .filter_map(|s| {
                    Some((
                        s["id"].as_str()?.to_string(),
                        s["token"].as_str()?.to_string(),
                    ))
                })
                .collect();
        }
    }

    /// Writes config.json as is (an invalid one included); the harness's tokens stay.
    pub fn write_config_text(&self, text: &str) {
        // Written whole, then renamed: a reload never reads half a file.
        let tmp = self.config_path.with_extension("json.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// SIGHUP, then waits (10 s at most) for the relay's log line saying how the reload
    /// went (applied, no change, or refused), and returns it.
    pub fn sighup(&mut self) -> String {
        let is_outcome = |l: &&str| {
            l.contains("config reloaded")
                || l.contains("config reload: no change")
                || l.contains("config reload refused")
        };
        let before = self.log().lines().filter(is_outcome).count();
        self.proc.signal(libc::SIGHUP);
        let mut line = None;
        wait_until(Duration::from_secs(10), || {
            line = self
                .log()
                .lines()
                .filter(is_outcome)
                .nth(before)
                .map(str::to_string);
            line.is_some()
        });
        line.unwrap_or_else(|| {
            panic!(
                "no reload outcome logged within 10 s of SIGHUP; log:\n{}",
                tail_lines(&self.log(), 30)
            )
        })
    }

    /// `POST /v1/reload` with this bearer token (None: no header).
    pub fn post_reload(&self, token: Option<&str>) -> HttpResp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.request("POST", "/v1/reload", &headers)
            .expect("POST /v1/reload")
    }

    // --- HTTP ---

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResp, String> {
        self.request_body(method, path, headers, None)
    }

    pub fn request_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<HttpResp, String> {
        let url = format!("{}{path}", self.api_url());
        let tls = self.client_tls();
        match &self.netns {
            None => http_body_tls(method, &url, headers, body, tls),
            Some(ns) => {
                let method = method.to_string();
                let body = body.map(str::to_string);
                let headers: Vec<(String, String)> = headers
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect();
                in_netns(ns, move || {
                    let h: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(a, b)| (a.as_str(), b.as_str()))
                        .collect();
                    http_body_tls(&method, &url, &h, body.as_deref(), tls)
                })
            }
        }
    }

    /// `https://127.0.0.1:PORT` with `RelayOpts::tls`, else `http://...`.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.http)
    }

    /// What the harness's own clients trust: exactly the relay's certificate (curl checks
    /// it the way other clients do; tests/https_api.rs).
    fn client_tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        let cert = self.tls_cert.as_ref()?;
        Some(stsync_user::tls::pinned(cert).expect("the relay's certificate"))
    }

    pub fn get(&self, path: &str) -> Result<HttpResp, String> {
        self.request("GET", path, &[])
    }

    pub fn token(&self, stream: &str) -> &str {
        &self.tokens[stream]
    }

    /// POST /v1/streams/:id/sessions with the given bearer token (None: no header).
    pub fn try_session(&self, stream: &str, token: Option<&str>) -> HttpResp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        self.request("POST", &format!("/v1/streams/{stream}/sessions"), &headers)
            .expect("POST sessions")
    }

    /// Calls the relay's API through the typed client (inside the relay's namespace, if it
    /// has one), with `stream`'s token when given. `request` is for what a client must not
    /// do: the API's refusals, its statuses and content types as such.
    pub fn api<T: Send + 'static>(
        &self,
        stream: Option<&str>,
        call: impl FnOnce(&Client) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let token = stream.map(|s| self.token(s));
        let client = match self.client_tls() {
            Some(tls) => Client::with_tls(&self.api_url(), token, tls),
            None => Client::new(&self.api_url(), token),
        };
        match &self.netns {
            None => call(&client),
            Some(ns) => in_netns(ns, move || call(&client)),
        }
    }

    /// A fresh session key for `stream`, minted with that stream's token.
    pub fn session(&self, stream: &str) -> String {
        let s = stream.to_string();
        self.api(Some(stream), move |c| c.create_session(&s))
            .unwrap_or_else(|e| panic!("POST /v1/streams/{stream}/sessions: {e}"))
            .session_id
    }

    pub fn url(&self, resource: &str, key: &str, mode: &str) -> String {
        format!(
            "srt://{}?streamid=#!::r={resource},s={key},m={mode}",
            self.srt
        )
    }

    /// A URL for a client that reaches the relay at `ip` (see `RelayOpts::srt_bind`).
    pub fn url_at(
        &self,
        ip: impl Into<std::net::IpAddr>,
        resource: &str,
        key: &str,
        mode: &str,
    ) -> String {
        // IPv6 in brackets, as libsrt's URI parser wants it.
        let a = std::net::SocketAddr::new(ip.into(), self.srt.port());
        format!("srt://{a}?streamid=#!::r={resource},s={key},m={mode}")
    }

    pub fn url_sid(&self, streamid: &str) -> String {
        format!("srt://{}?streamid={streamid}", self.srt)
    }

    /// Mints a key and returns a viewer (`m=request`) URL.
    pub fn viewer_url(&self, stream: &str) -> String {
        self.url(stream, &self.session(stream), "request")
    }

    pub fn publisher_url(&self, stream: &str) -> String {
        self.url(stream, &self.session(stream), "publish")
    }

    pub fn metrics(&self) -> String {
        self.api(None, Client::metrics_text)
            .unwrap_or_else(|e| panic!("GET /v1/metrics: {e}"))
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        prom_value(&self.metrics(), name, labels)
    }

    /// `GET /v1/streams`, decoded into the API's types (so a field missing or of another
    /// type fails here) and handed back as JSON for the tests to index.
    pub fn streams(&self) -> serde_json::Value {
        let list = self
            .api(None, Client::streams)
            .unwrap_or_else(|e| panic!("GET /v1/streams: {e}"));
        serde_json::to_value(list).expect("streams as JSON")
    }

    /// The relay's CPU time so far (utime + stime), seconds.
    pub fn cpu_seconds(&self) -> f64 {
        os::proc::Stat::read(self.pid()).map_or(0.0, |s| s.cpu_seconds())
    }

    pub fn rss_kb(&self) -> u64 {
        os::proc::rss_kb(self.pid()).unwrap_or(0)
    }

    /// Panics with the log tail unless the relay is still running.
    pub fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "relay died ({st}) {what}; log:\n{}",
                tail_lines(&self.log(), 80)
            );
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.proc.running() {
            self.proc.stop_within(Duration::from_secs(3));
        }
        if std::thread::panicking() {
            eprintln!(
                "----- stsync-proxy log tail ({}) -----\n{}\n-----",
                self.log_path.display(),
                tail_lines(&self.log(), 80)
            );
        }
    }
}
