//! Every common SRT client against the relay, running the very command lines that
//! `stsync-proxy session … --client X` prints (and the README shows): VLC, GStreamer,
//! ffplay, ffmpeg and srt-live-transmit as viewers; ffmpeg, srt-live-transmit and
//! GStreamer as publishers. Players that would open a window get their sink swapped for a
//! file (VLC, GStreamer) or run without display (ffplay); everything else is verbatim.
//!
//! VLC refuses to run as root: it runs as `nobody` (setpriv). Needs `cvlc` (vlc-bin,
//! vlc-plugin-base, vlc-plugin-access-extra) and `gst-launch-1.0`
//! (gstreamer1.0-tools, gstreamer1.0-plugins-bad); `cargo xtask test` installs them.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);

/// `stsync-proxy session <stream> --mode <mode> --client <client> <more>` against `relay`:
/// mints a key and prints the client's command.
fn session_command(
    relay: &Relay,
    stream: &str,
    mode: &str,
    client: &str,
    input: &str,
    more: &[&str],
) -> String {
    let out = Command::new(tool("relay"))
        .arg("--config")
        .arg(&relay.config_path)
        .args([
            "session",
            stream,
            "--mode",
            mode,
            "--client",
            client,
            "--host",
            &relay.srt.ip().to_string(),
            "--input",
            input,
        ])
        .args(more)
        .args(key_length(client, mode, more))
        .output()
        .expect("run stsync-proxy session");
    assert!(
        out.status.success(),
        "stsync-proxy session: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap().trim().to_string();
    eprintln!("[session] {client} {mode}: {text}");
    text
}

/// With `--encrypt`, each client asks for its own AES key length, so that between the
/// viewer and publisher tests every client encrypts with at least two of 128/192/256 and
/// each length is seen live.
fn key_length(client: &str, mode: &str, more: &[&str]) -> Vec<String> {
    if !more.contains(&"--encrypt") {
        return Vec::new();
    }
    let bytes = match (client, mode) {
        ("vlc", _) => 16,
        ("gstreamer", "view") | ("ffmpeg", "publish") | ("srt-live-transmit", "view") => 32,
        ("ffplay", _) | ("gstreamer", _) => 24,
        ("ffmpeg", _) => 24,
        _ => 16,
    };
    vec!["--pbkeylen".into(), bytes.to_string()]
}

/// Runs a printed command line through `sh -c` (optionally as `nobody`), in its own
/// process group, stopped with SIGINT.
fn shell(dir: &TempDir, name: &str, line: &str, as_nobody: bool) -> Proc {
    let err = dir.file(&format!("{name}.stderr"));
    // `exec` all the way down (setpriv, sh, the client): the client is the process the
    // harness signals and kills, so none outlives the test (with `su` in between, VLC did).
    let line = format!("exec {line}");
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--reset-env",
            "sh",
            "-c",
            &line,
        ]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &line]);
        c
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    eprintln!("[client] {name}: {line}");
    Proc::spawn(name, c, libc::SIGINT, Some(err))
}

fn require(prog: &str, test: &str) -> bool {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(prog).is_file());
    if !found {
        let msg = format!("{test}: {prog} not installed (cargo xtask test installs it)");
        if std::env::var("STSYNC_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("SKIP {msg}");
    }
    found
}

/// A world-writable directory for clients running as `nobody`.
fn open_dir(dir: &TempDir) -> std::path::PathBuf {
    let d = dir.file("out");
    std::fs::create_dir_all(&d).unwrap();
    let mut p = d.clone();
    // Every ancestor must be searchable by `nobody`.
    loop {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        let want = if p == d { 0o777 } else { mode | 0o011 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want)).unwrap();
        if !p.pop() || p.as_os_str().is_empty() || p == Path::new("/") {
            break;
        }
    }
    d
}

/// VLC, GStreamer, ffplay, ffmpeg and srt-live-transmit view one byte-exact stream at
/// once, each started from its printed command.
#[test]
fn every_viewer_client_plays_the_stream() {
    viewers_play_the_stream("every_viewer_client_plays_the_stream", &[]);
}

/// The same, each client with a key minted `--encrypt`: a passphrase of its own, which its
/// printed command carries (SRT's `passphrase` in the URL, GStreamer's `passphrase`
/// property, VLC's `--passphrase`).
#[test]
fn every_viewer_client_plays_the_stream_encrypted() {
    viewers_play_the_stream(
        "every_viewer_client_plays_the_stream_encrypted",
        &["--encrypt"],
    );
}

fn viewers_play_the_stream(test: &str, more: &[&str]) {
    if !require("cvlc", test) || !require("gst-launch-1.0", test) || !require("ffplay", test) {
        return;
    }
    if !require_root(test) {
        return;
    }
    let relay = Relay::start_default();
    let dir = TempDir::new("clients-view");
    let out = open_dir(&dir);
    let c = clip();
    let file = |n: &str| out.join(n).to_string_lossy().into_owned();
    let session_command = |relay: &Relay, stream: &str, mode: &str, client: &str, input: &str| {
        session_command(relay, stream, mode, client, input, more)
    };

    let vlc = session_command(&relay, "1", "view", "vlc", "-");
    assert!(
        vlc.contains("streamid=%23!::"),
        "VLC gets the encoded ID: {vlc}"
    );
    let vlc_line = format!(
        "{} -q --no-video-title-show --sout '#std{{access=file,mux=ts,dst={}}}' vlc://quit",
        vlc.replacen("vlc ", "cvlc ", 1),
        file("vlc.ts")
    );
    let gst = session_command(&relay, "1", "view", "gstreamer", "-");
    let gst_line = gst.replace(
        "! tsdemux ! decodebin ! autovideosink",
        &format!("! filesink location={}", file("gst.ts")),
    );
    assert_ne!(gst_line, gst, "GStreamer's sink is swapped for a file");
    let ffplay = session_command(&relay, "1", "view", "ffplay", "-");
    let ffplay_line = format!(
        "env SDL_AUDIODRIVER=dummy {} -nodisp -an -loglevel error",
        ffplay
    );
    let ffmpeg = session_command(&relay, "1", "view", "ffmpeg", "-")
        .replace("out.ts", &file("ffmpeg.ts"))
        .replacen("ffmpeg ", "ffmpeg -nostdin -loglevel error -y ", 1);
    let slt = session_command(&relay, "1", "view", "srt-live-transmit", "-")
        .replace("srt-live-transmit ", "srt-live-transmit -q -a:no ")
        .replace("out.ts", &file("slt.ts"));

    let mut viewers = [
        shell(&dir, "vlc", &vlc_line, true),
        shell(&dir, "gstreamer", &gst_line, false),
        shell(&dir, "ffplay", &ffplay_line, false),
        shell(&dir, "ffmpeg", &ffmpeg, false),
        shell(&dir, "srt-live-transmit", &slt, false),
    ];
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .metric("srt_connections_current", &[("mode", "request")])
            == Some(5.0)),
        "not all five viewers connected; relay log:\n{}",
        tail_lines(&relay.log(), 30)
    );
    let padded = c.padded(&dir, 0.5);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), &padded);
    let m_during = {
        sleep_secs(c.secs / 2.0);
        relay.metrics()
    };
    p.finish(LINGER);
    // The kernel path exports its per-viewer clone counts once a second.
    sleep_secs(1.2);
    let m = relay.metrics();
    for v in viewers.iter_mut() {
        assert!(v.running(), "{} exited early: {}", v.name, v.stderr_text());
        v.stop();
    }
    let whole = Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    };
    // Byte-exact where the client writes what it received.
    for n in ["gst.ts", "slt.ts"] {
        assert_contiguous(n, &std::fs::read(file(n)).unwrap_or_default(), c, whole);
    }
    if more.contains(&"--encrypt") {
        // Each viewer encrypted with the key length its command asked for.
        let log = relay.log();
        for bits in [128, 192, 256] {
            let field = format!("aes_bits={bits}");
            assert!(
                log.lines()
                    .any(|l| l.contains("mode=\"request\"") && has_field(l, &field)),
                "no AES-{bits} viewer in the relay's log:\n{}",
                tail_lines(&log, 20)
            );
        }
    }
    // Remuxers: decodable, every frame.
    let nref = c.reference_frames().len();
    for n in ["vlc.ts", "ffmpeg.ts"] {
        let frames = decode_frames_of_file(Path::new(&file(n)));
        assert_frames_tail(n, &frames, c, nref * 95 / 100, 3, 2);
    }
    // ffplay shows what it gets: the relay sent every viewer the same whole stream (by
    // either datapath), and all five stayed to the end.
    // srt-live-transmit sends what each read of its input returns, up to 1456 bytes.
    // Retransmissions are left out: how many a viewer asks for depends on its own losses.
    let datagrams = (c.bytes.len() / 1456) as f64;
    let mut per_viewer = Vec::new();
    let mut retransmitted = Vec::new();
    for s in prom_samples(&m, "srt_connection_data_packets_sent", &[]) {
        let id = s.label("id").unwrap_or("?");
        let of = |name| prom_value(&m, name, &[("id", id)]).unwrap_or(0.0);
        let rexmit = of("srt_connection_data_packets_retransmitted");
        per_viewer.push(s.value - rexmit + of("srt_connection_data_packets_sent_kernel"));
        retransmitted.push(rexmit);
    }
    assert_eq!(
        per_viewer.len(),
        5,
        "viewer connections at the end: {per_viewer:?}"
    );
    assert!(
        per_viewer
            .iter()
            .all(|&n| (n - per_viewer[0]).abs() <= 2.0 && n >= datagrams),
        "datagrams sent per viewer {per_viewer:?} (and retransmitted {retransmitted:?}), the clip alone is {datagrams}"
    );
    assert_eq!(
        prom_value(&m_during, "srt_connections_current", &[("mode", "request")]),
        Some(5.0),
        "a viewer left mid-stream"
    );
    record_result(&format!(
        "clients: VLC, GStreamer, ffplay, ffmpeg, srt-live-transmit viewed {} TS packets",
        c.n_packets()
    ));
}

/// ffmpeg, srt-live-transmit (fed by ffmpeg) and GStreamer publish from their printed
/// commands; a srt-live-transmit viewer gets a decodable, continuous stream each time.
#[test]
fn every_publisher_client_feeds_the_stream() {
    publishers_feed_the_stream("every_publisher_client_feeds_the_stream", &[]);
}

/// The same, each publisher encrypting with its key's own passphrase (`--encrypt`); the
/// clear viewer gets the stream decrypted.
#[test]
fn every_publisher_client_feeds_the_stream_encrypted() {
    publishers_feed_the_stream(
        "every_publisher_client_feeds_the_stream_encrypted",
        &["--encrypt"],
    );
}

fn publishers_feed_the_stream(test: &str, more: &[&str]) {
    if !require("gst-launch-1.0", test) {
        return;
    }
    let c = clip();
    for client in ["ffmpeg", "srt-live-transmit", "gstreamer"] {
        let relay = Relay::start_default();
        let dir = TempDir::new(&format!("clients-pub-{client}"));
        let mut v = SltViewer::start(&dir, "viewer", &relay.viewer_url("1"));
        sleep_secs(1.0);
        let line = session_command(
            &relay,
            "1",
            "publish",
            client,
            &c.path.to_string_lossy(),
            more,
        )
        .replace("ffmpeg -re", "ffmpeg -nostdin -loglevel error -re")
        .replace(
            "srt-live-transmit file://con",
            "srt-live-transmit -q file://con",
        );
        let mut p = shell(&dir, client, &line, false);
        let limit = secs(c.secs + 10.0);
        let exited = p.wait_exit(limit);
        if client == "srt-live-transmit" {
            // It does not exit at the end of its input: stop the pipeline once ffmpeg is
            // done (SIGINT to the whole group: sh, ffmpeg, srt-live-transmit).
            assert!(
                exited.is_none(),
                "srt-live-transmit exited: {}",
                p.stderr_text()
            );
            sleep_secs(0.5);
            p.signal_group(libc::SIGINT);
            p.stop();
        } else {
            assert!(
                exited.is_some_and(|s| s.success()),
                "{client} publisher: {exited:?} {}",
                p.stderr_text()
            );
        }
        sleep_secs(1.0);
        v.assert_running("after the publisher");
        v.stop();
        let got = v.output();
        let al = ts_align(&got);
        let breaks = cc_breaks(&al.packets);
        assert!(
            breaks.is_empty(),
            "{client}: CC breaks {:?}",
            &breaks[..breaks.len().min(10)]
        );
        let frames = decode_frames_of_file(&v.out);
        let nref = c.reference_frames().len();
        assert_frames_tail(client, &frames, c, nref * 95 / 100, 3, 2);
        if more.contains(&"--encrypt") {
            let bits = key_length(client, "publish", more)[1]
                .parse::<usize>()
                .unwrap()
                * 8;
            assert!(
                relay
                    .log()
                    .lines()
                    .any(|l| has_field(l, &format!("aes_bits={bits}"))),
                "{client} publisher not AES-{bits}"
            );
        }
        record_result(&format!(
            "clients: {client} published, viewer got {} bytes, {} frames",
            got.len(),
            frames.len()
        ));
    }
}

/// Log line `l` carries `field` (`name=value`) as one of its fields.
fn has_field(l: &str, field: &str) -> bool {
    l.split_whitespace().any(|w| w == field)
}
