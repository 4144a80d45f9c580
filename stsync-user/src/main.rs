use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use socket2::{Domain, Protocol, Socket, Type};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stsync_user::access::Access;
use stsync_user::config::Config;
use stsync_user::datapath::ebpf::{EbpfDatapath, EbpfOptions};
use stsync_user::datapath::kernel::Kernel;
use stsync_user::datapath::workers::{SharedKernel, WorkerDatapath};
use stsync_user::driver::{RelayHandle, Wake};
use stsync_user::http::{self, AppState};
use stsync_user::os::reuseport::{self, GroupError};
use stsync_user::pull_keys::{PullKeys, Upstreams};
use stsync_user::relay::{AddressLimits, KeySecret, Relay, RelayConfig, WallClock};
use stsync_user::reload::Reloader;
use tracing::{info, warn};

#[global_allocator]
static ALLOC: stsync_user::alloc_count::CountingAlloc = stsync_user::alloc_count::CountingAlloc;

#[derive(Parser)]
#[command(version, about = "Live SRT relay")]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = "config.json")]
    config: PathBuf,
    /// Which datapath fans data out to viewers.
    /// `auto` tries the eBPF kernel fast path and falls back to userspace (saying why);
    /// `ebpf` exits with the reason instead of falling back.
    #[arg(long, value_enum, default_value_t = DatapathArg::Auto)]
    datapath: DatapathArg,
    /// The compiled eBPF object (`cargo xtask build-ebpf`); by default the build output
    /// next to this executable's target directory.
    #[arg(long)]
    ebpf_object: Option<PathBuf>,
    /// Interfaces to attach the eBPF program to (comma-separated); by default every
    /// interface that is up.
    #[arg(long, value_delimiter = ',')]
    ebpf_interfaces: Option<Vec<String>>,
    /// Worker threads, each with its own socket on the SRT port (default: config.json's
    /// `workers`, else the cores this process may use).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=stsync_user::config::MAX_WORKERS as i64))]
    workers: Option<u32>,
    /// Log line format on stderr: `text` (human-readable) or `json` (one JSON object per
    /// line, for log shippers; never coloured). `RUST_LOG` filters either.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and validate the config (with `${NAME}` placeholders expanded from the
    /// environment, and the HTTPS certificate and key read if set), print a one-line
    /// summary and exit 0; exit non-zero with the reason otherwise. Nothing is bound.
    Check,
    /// Mint a session key through the running relay's HTTP API and print the stream's URL and
    /// ready-to-paste commands for ffmpeg, ffplay, srt-live-transmit, VLC, GStreamer and OBS.
    Session {
        /// The stream (its hex id in config.json).
        stream: String,
        /// What the key is for: one key serves one connection.
        #[arg(long, value_enum, default_value_t = SessionMode::View)]
        mode: SessionMode,
        /// The host name clients dial (default: the address in `srt_listen`, or this
        /// machine's host name when it listens on every address).
        #[arg(long)]
        host: Option<String>,
        /// The relay's API: `https://HOST:PORT`, `http://HOST:PORT`, or `HOST:PORT` (plain
        /// HTTP). Default: `http_listen` (127.0.0.1 for 0.0.0.0), over HTTPS when the config
        /// has `tls_cert`, accepting exactly that certificate.
        #[arg(long, alias = "http", value_name = "URL")]
        api: Option<String>,
        /// For an https API: trust the certificates in this PEM file (the CA that issued the
        /// relay's certificate, or a self-signed certificate itself) instead of the built-in
        /// Mozilla roots, as curl's `--cacert` does.
        #[arg(long, value_name = "PATH")]
        cacert: Option<PathBuf>,
        /// Bearer token (default: the stream's token in the config).
        #[arg(long)]
        token: Option<String>,
        /// The file publishing commands read.
        #[arg(long, default_value = "input.ts")]
        input: String,
        /// Print only this client's command (ffmpeg, ffplay, srt-live-transmit, vlc,
        /// gstreamer, obs), or `url`.
        #[arg(long)]
        client: Option<String>,
        /// Mint the key with a passphrase of its own, which the printed commands carry: the
        /// connection encrypts with it (instead of the stream's, if any).
        #[arg(long)]
        encrypt: bool,
        /// With `--encrypt`: the AES key length in bytes the printed commands ask for (16,
        /// 24 or 32; default: the stream's `pbkeylen`, else 16).
        #[arg(long, value_parser = ["16", "24", "32"])]
        pbkeylen: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SessionMode {
    View,
    Publish,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum DatapathArg {
    Auto,
    Ebpf,
    Userspace,
}

fn main() -> anyhow::Result<()> {
    // Parsed first: the log format is an option (clap prints its own usage errors).
    let mut args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init(),
    }
    let cfg = Config::load(&args.config)?;
    match args.cmd.take() {
        Some(Cmd::Check) => return check(&args, &cfg),
        Some(cmd) => return session::run(&cfg, cmd),
        None => {}
    }
    // This thread waits for signals and the others; each worker runs the relay on a thread
    // of its own, HTTP on another (see `serve`).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(cfg, args))
}

/// `stsync-proxy check`: what `serve` would refuse at start, without binding anything.
fn check(args: &Args, cfg: &Config) -> anyhow::Result<()> {
    let scheme = match cfg.tls() {
        Some((cert, key)) => {
            stsync_user::tls::server_config(cert, key)
                .context("cannot serve the API over HTTPS (config.json `tls_cert`, `tls_key`)")?;
            "https"
        }
        None => "http",
    };
    let workers = match args.workers.or(cfg.workers) {
        Some(n) => n.to_string(),
        None => format!("auto ({})", default_workers()),
    };
    println!(
        "{}: ok: srt={} api={scheme}://{} streams={} workers={workers}",
        args.config.display(),
        cfg.srt_listen,
        cfg.http_listen,
        cfg.streams.len(),
    );
    Ok(())
}

mod session {
    //! `stsync-proxy session`: a key from the running relay, and the commands that use it.
    use super::{Cmd, SessionMode};
    use anyhow::{bail, Context};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use stsync_user::api::Client;
    use stsync_user::clients::{invocations, Target};
    use stsync_user::config::Config;
    use stsync_user::srt::streamid::{normalize_hex, Mode};

    pub fn run(cfg: &Config, cmd: Cmd) -> anyhow::Result<()> {
        let Cmd::Session {
            stream,
            mode,
            host,
            api,
            cacert,
            token,
            input,
            client,
            encrypt,
            pbkeylen,
        } = cmd
        else {
            unreachable!("main runs `check` itself");
        };
        let resource = normalize_hex(&stream).context("the stream id must be hex")?;
        let configured = cfg.streams.iter().find(|s| s.id == resource);
        let token = match token {
            Some(t) => t,
            None => configured
                .map(|s| s.token.clone())
                .with_context(|| format!("stream {resource} is not in the config; pass --token"))?,
        };
        let pbkeylen = match pbkeylen {
            Some(n) => n.parse()?,
            None => configured.and_then(|s| s.pbkeylen).unwrap_or(16),
        };
        let api = api_client(cfg, api, cacert, &token)?;
        let (key, passphrase) = mint(&api, &resource, encrypt)?;
        let host = host.unwrap_or_else(|| match cfg.srt_listen.ip() {
            ip if ip.is_unspecified() => hostname().unwrap_or_else(|| "127.0.0.1".into()),
            ip => ip.to_string(),
        });
        let t = Target {
            host,
            port: cfg.srt_listen.port(),
            resource: resource.clone(),
            key: key.clone(),
            mode: match mode {
                SessionMode::View => Mode::Request,
                SessionMode::Publish => Mode::Publish,
            },
            pbkeylen: passphrase.as_ref().map(|_| pbkeylen),
            passphrase,
        };
        let all = invocations(&t, &input);
        if let Some(c) = client {
            if c == "url" {
                println!("{}", t.url());
                return Ok(());
            }
            let Some(i) = all.iter().find(|i| i.client == c) else {
                bail!("no {c} command for this mode");
            };
            println!("{}", i.text);
            return Ok(());
        }
        println!(
            "# stream {resource}, session key {key}: one connection, within the key's lifetime"
        );
        println!("# URL: {}", t.url());
        for i in all {
            println!("\n# {}\n{}", i.client, i.text);
        }
        Ok(())
    }

    /// The relay's API with `token`: at `api` if given, else at the config's `http_listen`;
    /// an https one checked against `cacert`, else (the config's address) against exactly
    /// the config's `tls_cert`: this host dials the relay's local address, which a
    /// certificate made for its public name does not list.
    fn api_client(
        cfg: &Config,
        api: Option<String>,
        cacert: Option<PathBuf>,
        token: &str,
    ) -> anyhow::Result<Client> {
        let (url, own_cert) = match api {
            Some(a) => (api_url(&a)?, None),
            None => {
                let addr = local(cfg.http_listen);
                match cfg.tls_cert.as_deref() {
                    Some(cert) => (format!("https://{addr}"), Some(cert)),
                    None => (format!("http://{addr}"), None),
                }
            }
        };
        let tls = match (cacert, own_cert) {
            (Some(_), _) if !url.starts_with("https://") => {
                bail!("--cacert is for an https:// API; {url} is plain HTTP")
            }
            (Some(ca), _) => Some(stsync_user::tls::trusting(&ca)?),
            (None, Some(cert)) => {
                Some(stsync_user::tls::pinned(cert).context("the config's `tls_cert`, to trust")?)
            }
            (None, None) => None,
        };
        Ok(match tls {
            Some(tls) => Client::with_tls(&url, Some(token), tls),
            None => Client::new(&url, Some(token)),
        })
    }

    /// `--api`: a URL, or `HOST:PORT` for plain HTTP.
    fn api_url(a: &str) -> anyhow::Result<String> {
        match a.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() => Ok(a.to_string()),
            Some(_) => {
                bail!("--api {a}: expected https://HOST:PORT, http://HOST:PORT or HOST:PORT")
            }
            None => Ok(format!("http://{a}")),
        }
    }

    /// An address that reaches a server listening on `a` from this host.
    fn local(a: SocketAddr) -> SocketAddr {
        if a.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
        } else {
            a
        }
    }

    fn hostname() -> Option<String> {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its length.
        if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0)?;
        String::from_utf8(buf[..end].to_vec()).ok()
    }

    /// `POST /v1/streams/:id/sessions`: the new key, and its passphrase if `encrypt`.
    fn mint(
        client: &Client,
        resource: &str,
        encrypt: bool,
    ) -> anyhow::Result<(String, Option<String>)> {
        let created = if encrypt {
            client.create_encrypted_session(resource)
        } else {
            client.create_session(resource)
        }
        .map_err(|e| {
            // rustls refuses a server certificate marked as a CA (what `openssl req -x509`
            // makes unless told otherwise); curl does not, so say what to change.
            let hint = if e.to_string().contains("CaUsedAsEndEntity") {
                " (the relay's certificate is marked as a CA, basicConstraints CA:TRUE, which \
                 rustls does not take as a server's: make it with CA:FALSE, see README, HTTPS)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!(
                "minting a key for stream {resource} at {}{hint}",
                client.base_url()
            ))
        })?;
        Ok((created.session_id, created.passphrase))
    }
}

fn setup_socket(sock: &Socket) -> std::io::Result<()> {
    // `[::]` takes IPv4 callers too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says.
    if sock.domain()? == Domain::IPV6 {
        sock.set_only_v6(false)?;
    }
    // Room for bursts: a full fan-out of one packet to many viewers is queued at once.
    let _ = sock.set_send_buffer_size(8 << 20);
    let _ = sock.set_recv_buffer_size(8 << 20);
    sock.set_nonblocking(true)
}

fn udp_socket(addr: std::net::SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    setup_socket(&sock)?;
    sock.bind(&addr.into())
        .with_context(|| format!("cannot bind SRT socket {addr}"))?;
    Ok(sock.into())
}

/// One socket per worker on `addr`, steered by socket ID; one worker's socket when `n` is
/// 1, or when steering cannot be attached (said so: unsteered, a datagram could reach a
/// worker that does not own its connection).
fn worker_sockets(addr: std::net::SocketAddr, n: u32) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    if n == 1 {
        return Ok(vec![udp_socket(addr)?]);
    }
    match reuseport::bind_group(addr, n, setup_socket) {
        Ok(group) => Ok(group.into_iter().map(Into::into).collect()),
        Err(GroupError::Steering(e)) => {
            warn!("{e}: running one worker instead of {n}");
            Ok(vec![udp_socket(addr)?])
        }
        Err(GroupError::Socket(e)) => {
            Err(e).with_context(|| format!("cannot bind SRT socket {addr}"))
        }
    }
}

/// The cores this process may run on.
fn default_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

async fn serve(cfg: Config, args: Args) -> anyhow::Result<()> {
    let datapath = args.datapath;
    let workers = args
        .workers
        .or(cfg.workers)
        .unwrap_or_else(default_workers)
        .min(stsync_user::config::MAX_WORKERS);
    let sockets = worker_sockets(cfg.srt_listen, workers)?;
    let workers = sockets.len() as u32;
    let start = Instant::now();
    // Signed session keys expire on the wall clock, which the relay reads off this anchor.
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    let relays = Relay::workers(
        RelayConfig {
            latency: cfg.latency(),
            buffer_packets: cfg.buffer_packets,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_connections: cfg.max_connections,
            max_viewers_per_stream: cfg.max_viewers_per_stream,
            per_address: AddressLimits {
                max_connections: cfg.max_connections_per_ip,
                handshakes_per_sec: cfg.handshakes_per_ip_per_sec,
            },
            session_ttl: Duration::from_secs(cfg.session_ttl_secs),
            key_secret: cfg
                .key_secret
                .as_deref()
                .map(|s| KeySecret::new(s.as_bytes())),
            wall_clock: WallClock { at: start, unix },
            key_schedule: cfg.key_schedule(),
        },
        cfg.streams.iter().map(|s| s.relay()).collect(),
        rand::random(),
        start,
        workers,
    );
    // Before binding anything: a certificate that cannot be served stops the start.
    let tls = match cfg.tls() {
        Some((cert, key)) => Some(
            stsync_user::tls::server_config(cert, key)
                .context("cannot serve the API over HTTPS (config.json `tls_cert`, `tls_key`)")?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let http_listener = std::net::TcpListener::bind(cfg.http_listen)
        .with_context(|| format!("cannot bind HTTP listener {}", cfg.http_listen))?;
    http_listener.set_nonblocking(true)?;

    let srt_addr = sockets[0].local_addr()?;
    let wakes = Wake::all(sockets.len());
    let kernel = match datapath {
        DatapathArg::Userspace => None,
        DatapathArg::Auto | DatapathArg::Ebpf => {
            let opts = EbpfOptions {
                object: args
                    .ebpf_object
                    .clone()
                    .unwrap_or_else(Kernel::default_object_path),
                interfaces: args.ebpf_interfaces.clone(),
                listen: srt_addr,
                streams: cfg.kernel_streams(),
                max_connections: cfg.max_connections.try_into().unwrap_or(u32::MAX),
            };
            match EbpfDatapath::start(&opts, &sockets[0]) {
                Ok(dp) => Some(SharedKernel::new(
                    dp,
                    wakes.iter().map(|w| w.own.clone()).collect(),
                )),
                Err(e) if datapath == DatapathArg::Ebpf => {
                    anyhow::bail!("--datapath ebpf: {e}")
                }
                Err(e) => {
                    warn!("eBPF datapath unavailable, serving viewers from userspace: {e}");
                    None
                }
            }
        }
    };
    info!(
        srt = %srt_addr,
        api = %format_args!("{scheme}://{}", http_listener.local_addr()?),
        streams = cfg.streams.len(),
        // Which keys it mints (never the secret itself).
        session_keys = if cfg.key_secret.is_some() { "signed" } else { "random" },
        "stsync-proxy listening, datapath={} workers={workers}",
        if kernel.is_some() { "ebpf" } else { "userspace" },
    );

    let (handle, requests) = RelayHandle::new(sockets.len());
    let access = Arc::new(std::sync::RwLock::new(Arc::new(Access::from_config(&cfg))));
    let reloader = Arc::new(Reloader::new(
        args.config.clone(),
        cfg.clone(),
        handle.clone(),
        access.clone(),
    ));
    let state = Arc::new(AppState {
        access,
        relay: handle,
        reloader: Some(reloader.clone()),
    });
    let nofile = http::nofile_limit();
    let http_opts = http::ServeOptions {
        header_timeout: Duration::from_millis(cfg.http_header_timeout_ms),
        idle_timeout: Duration::from_millis(cfg.http_idle_timeout_ms),
        shutdown_timeout: Duration::from_millis(cfg.http_shutdown_timeout_ms),
        max_connections: http::connection_cap(nofile),
        per_address: AddressLimits {
            max_connections: cfg.http_max_connections_per_ip,
            handshakes_per_sec: cfg.http_connections_per_ip_per_sec,
        },
        tls,
    };
    info!(
        max_connections = http_opts.max_connections,
        rlimit_nofile = nofile,
        header_timeout_ms = cfg.http_header_timeout_ms,
        idle_timeout_ms = cfg.http_idle_timeout_ms,
        shutdown_timeout_ms = cfg.http_shutdown_timeout_ms,
        "HTTP limits (connections: half the file-descriptor limit, at most {})",
        http::MAX_CONNECTIONS
    );
    for (stream, why) in cfg.weak_tokens() {
        warn!(
            "stream {stream}: the token {why}; accepted only because the HTTP API listens on \
             loopback ({}). See README, \"Opening it up\"",
            cfg.http_listen
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let shutdown_timeout = http_opts.shutdown_timeout;
    let (http_done_tx, http_done) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    // HTTP gets a thread of its own: a relay busy with a packet flood must not make the
    // metrics and session API unreachable, and the relay must not wait on HTTP either.
    let serve_http = move || async move {
        let listener = tokio::net::TcpListener::from_std(http_listener)?;
        http::serve(listener, http::router(state), http_opts, async move {
            let _ = http_stop.changed().await;
        })
        .await;
        anyhow::Ok(())
    };
    spawn_with_runtime("http".into(), serve_http, move |r| {
        let _ = http_done_tx.send(r);
    })?;
    let stop_tx = Arc::new(stop_tx);
    stop_on_signal(stop_tx.clone());
    reload_on_sighup(reloader);
    // Each worker says when it ends; one that ends on its own (an error, a panic) stops
    // the others rather than leave the relay half served.
    let (ended_tx, mut ended) =
        tokio::sync::mpsc::unbounded_channel::<(usize, anyhow::Result<()>)>();
    let upstreams: Upstreams = Arc::new(
        cfg.streams
            .iter()
            .filter(|s| !s.upstream.is_empty())
            .map(|s| (s.id.clone(), s.upstream.clone()))
            .collect(),
    );
    for (i, (((relay, socket), requests), wake)) in relays
        .into_iter()
        .zip(sockets)
        .zip(requests)
        .zip(wakes)
        .enumerate()
    {
        let kernel = kernel.clone();
        let upstreams = upstreams.clone();
        let mut stop = stop_rx.clone();
        let ended_tx = ended_tx.clone();
        // Nothing on the packet path crosses threads but the feeds.
        let work = move || async move {
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            let dp = Box::new(WorkerDatapath::new(i, &socket, kernel));
            let pulls = PullKeys::new(upstreams);
            stsync_user::driver::run(relay, &socket, dp, requests, wake, pulls, async move {
                let _ = stop.changed().await;
            })
            .await
            // SHUTDOWN has gone to every SRT peer: the socket closes here, so a supervisor
            // can start a new relay while HTTP drains.
        };
        spawn_with_runtime(format!("worker-{i}"), work, move |r| {
            let _ = ended_tx.send((i, r));
        })?;
    }
    drop(ended_tx);
    let mut failed = None;
    for _ in 0..workers {
        let Some((i, r)) = ended.recv().await else {
            break;
        };
        if let Err(e) = r {
            warn!("worker {i} stopped: {e:#}; stopping the others");
            let _ = stop_tx.send(true);
            failed.get_or_insert(e);
        }
    }
    drop(kernel);
    // HTTP drains within its own deadline; the margin only covers a thread that is stuck.
    match http_done.recv_timeout(shutdown_timeout + Duration::from_secs(2)) {
        Ok(r) => r?,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            warn!("HTTP did not stop within its shutdown deadline; exiting anyway")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            anyhow::bail!("HTTP thread ended without a word")
        }
    }
    if let Some(e) = failed {
        return Err(e.context("a worker stopped"));
    }
    info!("stopped");
    Ok(())
}

/// Runs `task` on a thread of its own with a single-threaded runtime (the task owns all it
/// touches: no cross-thread wake-ups); `done` learns how it ended, a panic included.
fn spawn_with_runtime<F, Fut>(
    name: String,
    task: F,
    done: impl FnOnce(anyhow::Result<()>) + Send + 'static,
) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    std::thread::Builder::new().name(name).spawn(move || {
        let run = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(task())
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")));
        done(r);
    })?;
    Ok(())
}

/// SIGTERM and SIGINT both stop the relay gracefully.
fn stop_on_signal(stop: Arc<tokio::sync::watch::Sender<bool>>) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        }
        let _ = stop.send(true);
    });
}

/// SIGHUP reloads config.json (see `reload`): one at a time, each logged; one refused
/// keeps the running config.
fn reload_on_sighup(reloader: Arc<Reloader>) {
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("signal handler");
        while hup.recv().await.is_some() {
            // The outcome is logged by the reload itself.
            let _ = reloader.reload("SIGHUP").await;
        }
    });
}
