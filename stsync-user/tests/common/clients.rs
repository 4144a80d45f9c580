//! Clients.

use super::*;

pub(crate) fn stats_args(stats: &Path) -> Vec<String> {
    // -s counts packets, not milliseconds: a record every 10 packets keeps the last record
    // close to the final totals.
    vec![
        "-s:10".into(),
        "-f".into(),
        "-pf:json".into(),
        format!("-statsout:{}", stats.display()),
    ]
}

/// libsrt statistics records written by srt-live-transmit (`-pf:json -statsout`).
pub fn read_stats(path: &Path) -> Vec<serde_json::Value> {
    read_lossy(path)
        .lines()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

pub(crate) fn stat_u64(v: &serde_json::Value, dir: &str, key: &str) -> u64 {
    v[dir][key].as_u64().unwrap_or(0)
}

/// Summary of a srt-live-transmit stats record (totals, since `-f` is passed).
#[derive(Debug, Default, Clone, Copy)]
pub struct SltStats {
    pub recv_packets: u64,
    pub recv_unique: u64,
    pub recv_lost: u64,
    pub recv_dropped: u64,
    pub recv_retrans: u64,
    pub recv_belated: u64,
    pub send_packets: u64,
    pub send_unique: u64,
    pub send_lost: u64,
    pub send_dropped: u64,
    pub send_retrans: u64,
    pub rtt_ms: f64,
}

pub fn stats_summary(v: &serde_json::Value) -> SltStats {
    SltStats {
        recv_packets: stat_u64(v, "recv", "packets"),
        recv_unique: stat_u64(v, "recv", "packetsUnique"),
        recv_lost: stat_u64(v, "recv", "packetsLost"),
        recv_dropped: stat_u64(v, "recv", "packetsDropped"),
        recv_retrans: stat_u64(v, "recv", "packetsRetransmitted"),
        recv_belated: stat_u64(v, "recv", "packetsBelated"),
        send_packets: stat_u64(v, "send", "packets"),
        send_unique: stat_u64(v, "send", "packetsUnique"),
        send_lost: stat_u64(v, "send", "packetsLost"),
        send_dropped: stat_u64(v, "send", "packetsDropped"),
        send_retrans: stat_u64(v, "send", "packetsRetransmitted"),
        rtt_ms: v["link"]["rtt"].as_f64().unwrap_or(0.0),
    }
}

/// `pv -q -L <rate> clip.ts | srt-live-transmit -q -a:no file://con URL`: publishes the
/// clip byte for byte at its own rate.
/// How long a byte publisher's srt-live-transmit gets to connect before data flows.
pub const PUBLISHER_CONNECT_WAIT: Duration = Duration::from_millis(500);

/// `pv -q -L <rate> clip.ts > out`: the clip's bytes at its own rate.
pub fn pv_paced(name: &str, clip: &Clip, out: std::io::PipeWriter) -> Proc {
    let mut pv = command(None, "pv");
    pv.args(["-q", "-L", &clip.rate.to_string()])
        .arg(&clip.path)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::null());
    Proc::spawn(name, pv, libc::SIGTERM, None)
}

pub struct BytePublisher {
    pub name: String,
    pv: Proc,
    slt: Proc,
    pub started: Instant,
    pub stats: Option<PathBuf>,
    clip_secs: f64,
}

impl BytePublisher {
    pub fn start(dir: &TempDir, name: &str, url: &str, clip: &Clip) -> BytePublisher {
        Self::start_opts(dir, name, url, clip, None, false)
    }

    pub fn start_opts(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        stats: bool,
    ) -> BytePublisher {
        Self::start_when(dir, name, url, clip, ns, stats, None)
    }

    /// `start_opts` with messages of `chunk` bytes instead of srt-live-transmit's default
    /// (`SLT_CHUNK`): 1316 (7 TS packets, what ffmpeg and OBS send) keeps an IPv6 datagram
    /// within a 1500-byte MTU, where libsrt's 1456 is fragmented.
    pub fn start_chunked(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        chunk: usize,
    ) -> BytePublisher {
        Self::start_full(dir, name, url, clip, ns, false, None, Some(chunk))
    }

    /// `start_opts`, feeding data only once `connected()` says so (e.g. the relay counts a
    /// publish connection; bounded by 10 s) instead of after a fixed wait: with loss on
    /// the publisher's path the handshake itself may need retries.
    pub fn start_when(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        stats: bool,
        connected: Option<&dyn Fn() -> bool>,
    ) -> BytePublisher {
        Self::start_full(dir, name, url, clip, ns, stats, connected, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_full(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
        stats: bool,
        connected: Option<&dyn Fn() -> bool>,
        chunk: Option<usize>,
    ) -> BytePublisher {
        // srt-live-transmit reads its input from the start but discards what it reads
        // before its SRT connection is up (seen: the first ~20 chunks went missing), so
        // pv starts feeding only once the caller had time to connect.
        let (reader, writer) = std::io::pipe().expect("pipe");
        let err = dir.file(&format!("{name}.stderr"));
        let stats_path = stats.then(|| dir.file(&format!("{name}.stats.json")));
        let mut slt = command(ns, "srt-live-transmit");
        slt.args(["-q", "-a:no"]);
        if let Some(n) = chunk {
            slt.arg(format!("-chunk:{n}"));
        }
        if let Some(p) = &stats_path {
            slt.args(stats_args(p));
        }
        slt.args(["file://con", url])
            .stdin(Stdio::from(reader))
            .stdout(Stdio::null())
            .stderr(out_file(&err));
        let mut slt = Proc::spawn(
            &format!("{name}/srt-live-transmit"),
            slt,
            libc::SIGINT,
            Some(err),
        );
        match connected {
            None => {
                slt.wait_exit(PUBLISHER_CONNECT_WAIT);
            }
            Some(f) => {
                let ok = wait_until(Duration::from_secs(10), || f() || !slt.running());
                assert!(
                    ok,
                    "{name}: not connected within 10 s: {}",
                    slt.stderr_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let pv = pv_paced(&format!("{name}/pv"), clip, writer);
        eprintln!("[client] {name}: byte publisher -> {url}");
        BytePublisher {
            name: name.into(),
            pv,
            slt,
            started: Instant::now(),
            stats: stats_path,
            clip_secs: clip.secs,
        }
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// pv still feeding the clip.
    pub fn feeding(&mut self) -> bool {
        self.pv.running()
    }

    pub fn slt_running(&mut self) -> bool {
        self.slt.running()
    }

    pub fn slt_status(&mut self) -> Option<ExitStatus> {
        self.slt.status()
    }

    pub fn wait_slt_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.slt.wait_exit(timeout)
    }

    /// Waits until the whole clip went into srt-live-transmit (bounded by the clip
    /// length plus 10 s), keeps the connection `linger` longer (retransmissions, play-out), then
    /// closes it (SIGINT: srt-live-transmit does not exit on end of input).
    pub fn finish(&mut self, linger: Duration) {
        let limit = secs((self.clip_secs - self.elapsed()).max(0.0) + 10.0);
        assert!(
            self.pv.wait_exit(limit).is_some(),
            "{}: pv still feeding after the clip's duration + 10 s",
            self.name
        );
        std::thread::sleep(linger);
        assert!(
            self.slt.running(),
            "{}: srt-live-transmit exited before the clip was done: {}",
            self.name,
            self.stderr()
        );
        self.stop();
    }

    /// SIGKILL: the connection vanishes without a SHUTDOWN.
    pub fn kill_silently(&mut self) {
        self.slt.signal(libc::SIGKILL);
        self.slt.wait_exit(Duration::from_secs(2));
        self.pv.stop();
    }

    /// Closes the connection now (SIGINT to srt-live-transmit; pv then gets EPIPE).
    pub fn stop(&mut self) {
        self.slt.stop();
        self.pv.stop();
    }

    pub fn stderr(&self) -> String {
        self.slt.stderr_text()
    }

    pub fn last_stats(&self) -> Option<SltStats> {
        self.stats
            .as_deref()
            .and_then(|p| read_stats(p).last().map(stats_summary))
    }
}

/// `ffmpeg -re -i clip.ts -c copy -f mpegts URL` (remuxes: not byte-exact).
pub struct FfmpegPublisher {
    pub proc: Proc,
}

impl FfmpegPublisher {
    pub fn start(
        dir: &TempDir,
        name: &str,
        url: &str,
        clip: &Clip,
        ns: Option<&str>,
    ) -> FfmpegPublisher {
        let err = dir.file(&format!("{name}.stderr"));
        let mut c = command(ns, "ffmpeg");
        c.args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            &ffmpeg_loglevel(),
            "-re",
            "-i",
        ])
        .arg(&clip.path)
        .args(["-c", "copy", "-f", "mpegts", url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out_file(&err));
        eprintln!("[client] {name}: ffmpeg publisher -> {url}");
        FfmpegPublisher {
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
        }
    }
}

/// `srt-live-transmit -q -a:no URL file://con > out.ts` (optionally with libsrt stats).
pub struct SltViewer {
    pub name: String,
    pub proc: Proc,
    pub out: PathBuf,
    pub stats: Option<PathBuf>,
    pub started: Instant,
}

impl SltViewer {
    pub fn start(dir: &TempDir, name: &str, url: &str) -> SltViewer {
        Self::start_opts(dir, name, url, None, false)
    }

    /// A viewer whose output goes to /dev/null (load generation).
    pub fn start_discard(dir: &TempDir, name: &str, url: &str) -> SltViewer {
        Self::start_full(dir, name, url, None, false, true)
    }

    pub fn start_opts(
        dir: &TempDir,
        name: &str,
        url: &str,
        ns: Option<&str>,
        stats: bool,
    ) -> SltViewer {
        Self::start_full(dir, name, url, ns, stats, false)
    }

    fn start_full(
        dir: &TempDir,
        name: &str,
        url: &str,
        ns: Option<&str>,
        stats: bool,
        discard: bool,
    ) -> SltViewer {
        let out = if discard {
            PathBuf::from("/dev/null")
        } else {
            dir.file(&format!("{name}.ts"))
        };
        let err = dir.file(&format!("{name}.stderr"));
        let stats_path = stats.then(|| dir.file(&format!("{name}.stats.json")));
        let mut c = command(ns, "srt-live-transmit");
        c.args(["-q", "-a:no"]);
        if let Some(p) = &stats_path {
            c.args(stats_args(p));
        }
        c.args([url, "file://con"])
            .stdin(Stdio::null())
            .stdout(out_file(&out))
            .stderr(out_file(&err));
        eprintln!("[client] {name}: srt-live-transmit viewer <- {url}");
        SltViewer {
            name: name.into(),
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
            out,
            stats: stats_path,
            started: Instant::now(),
        }
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    pub fn received_len(&self) -> u64 {
        fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits until at least `n` bytes arrived.
    pub fn wait_bytes(&mut self, n: u64, timeout: Duration) -> bool {
        wait_until(timeout, || self.received_len() >= n)
    }

    pub fn stop(&mut self) {
        self.proc.stop();
    }

    pub fn output(&self) -> Vec<u8> {
        fs::read(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr_text()
    }

    pub fn stats_records(&self) -> Vec<serde_json::Value> {
        self.stats.as_deref().map(read_stats).unwrap_or_default()
    }

    pub fn last_stats(&self) -> Option<SltStats> {
        self.stats_records().last().map(stats_summary)
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "{} exited ({st}) {what}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

/// ffmpeg's log level for clients (`STSYNC_FFMPEG_LOGLEVEL`, default "warning").
pub fn ffmpeg_loglevel() -> String {
    std::env::var("STSYNC_FFMPEG_LOGLEVEL").unwrap_or_else(|_| "warning".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfKind {
    /// `-c copy -f mpegts out.ts`
    Copy,
    /// decodes: `-map 0:v:0 -f framecrc out.crc`
    Decode,
}

pub struct FfmpegViewer {
    pub name: String,
    pub kind: FfKind,
    pub proc: Proc,
    pub out: PathBuf,
    pub started: Instant,
}

impl FfmpegViewer {
    pub fn start(
        dir: &TempDir,
        name: &str,
        url: &str,
        kind: FfKind,
        ns: Option<&str>,
    ) -> FfmpegViewer {
        let out = dir.file(&format!(
            "{name}.{}",
            if kind == FfKind::Copy { "ts" } else { "crc" }
        ));
        let err = dir.file(&format!("{name}.stderr"));
        let mut c = command(ns, "ffmpeg");
        c.args([
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            &ffmpeg_loglevel(),
            "-y",
            "-i",
            url,
        ]);
        match kind {
            FfKind::Copy => c.args([
                "-map",
                "0",
                "-c",
                "copy",
                "-flush_packets",
                "1",
                "-f",
                "mpegts",
            ]),
            FfKind::Decode => c.args(framecrc_args()),
        };
        c.arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out_file(&err));
        eprintln!("[client] {name}: ffmpeg {kind:?} viewer <- {url}");
        FfmpegViewer {
            name: name.into(),
            kind,
            proc: Proc::spawn(name, c, libc::SIGINT, Some(err)),
            out,
            started: Instant::now(),
        }
    }

    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// SIGINT: ffmpeg finishes the output file (and flushes the decoder). Once it is
    /// transcoding, ffmpeg's interrupt callback (which ends a blocking SRT read) fires only
    /// from the second signal on, so an idle viewer needs two.
    pub fn stop(&mut self) {
        if !self.proc.running() {
            return;
        }
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_exit(Duration::from_secs(1)).is_none() {
            self.proc.signal(libc::SIGINT);
            self.proc.stop_within(Duration::from_secs(5));
        }
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr_text()
    }

    pub fn output(&self) -> Vec<u8> {
        fs::read(&self.out).unwrap_or_default()
    }

    /// Decoded video frame CRCs (decoding the copied file for `Copy`).
    pub fn frames(&self) -> Vec<u32> {
        match self.kind {
            FfKind::Decode => parse_framecrc(&read_lossy(&self.out)),
            FfKind::Copy => {
                if fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0) == 0 {
                    return Vec::new();
                }
                decode_frames_of_file(&self.out)
            }
        }
    }

    pub fn assert_running(&mut self, what: &str) {
        if let Some(st) = self.proc.status() {
            panic!(
                "{} exited ({st}) {what}; stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

/// One srt-live-transmit connection attempt expected to fail: returns (exited in time,
/// stderr). `-a:no` so it does not retry.
pub fn slt_attempt(dir: &TempDir, name: &str, url: &str, timeout: Duration) -> (bool, String) {
    slt_attempt_until(dir, name, url, timeout, |_| false)
}

/// `slt_attempt` that also stops waiting once `done(stderr)` holds (e.g. the expected
/// rejection text was printed): under load srt-live-transmit -a:no was seen printing
/// "REJECT reported ..." and then not exiting for seconds.
pub fn slt_attempt_until(
    dir: &TempDir,
    name: &str,
    url: &str,
    timeout: Duration,
    done: impl Fn(&str) -> bool,
) -> (bool, String) {
    let err = dir.file(&format!("{name}.stderr"));
    let mut c = command(None, "srt-live-transmit");
    c.args(["-q", "-a:no", url, "file://con"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out_file(&err));
    let mut p = Proc::spawn(name, c, libc::SIGINT, Some(err));
    wait_until(timeout, || p.status().is_some() || done(&p.stderr_text()));
    // Give a caller that printed its reason a moment to exit by itself.
    let exited = p.wait_exit(Duration::from_millis(500)).is_some();
    p.stop();
    (exited, p.stderr_text())
}
