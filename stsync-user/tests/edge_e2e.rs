//! Edge relays (config.json `upstream`): a stream pulled from an origin relay and served to
//! the edge's own viewers, with real libsrt clients. On loopback (userspace datapath): a
//! tree of an origin and two edges, byte-exact at every viewer; the origin killed and
//! started again while edge viewers stay connected; a standby origin taking over. In
//! network namespaces (root): the edges on the kernel path, 5 % loss on the origin → edge
//! link, and a delay set on the origin reaching edge viewers.

mod common;

use common::*;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);

fn edge_of(upstreams: &[&Relay], base: RelayOpts) -> RelayOpts {
    RelayOpts {
        upstream: vec![(
            "1".into(),
            upstreams.iter().map(|u| u.upstream_entry("1")).collect(),
        )],
        ..base
    }
}

fn userspace() -> RelayOpts {
    RelayOpts {
        datapath: Some("userspace".into()),
        ..RelayOpts::default()
    }
}

/// The edge's pull as its metrics say: (connected, reconnects).
fn pull_state(edge: &Relay) -> (Option<f64>, Option<f64>) {
    let m = edge.metrics();
    (
        prom_value(&m, "srt_upstream_connected", &[("stream", "1")]),
        prom_value(&m, "srt_upstream_reconnects_total", &[("stream", "1")]),
    )
}

/// Publisher → origin → two edges → two srt-live-transmit viewers on each: every viewer
/// gets the whole clip byte for byte, the origin serves only the two edges, and each
/// edge's API and metrics show its upstream connected.
#[test]
fn origin_and_two_edges_on_loopback() {
    let c = clip();
    let origin = Relay::start(userspace());
    let edges = [
        Relay::start(edge_of(&[&origin], userspace())),
        Relay::start(edge_of(&[&origin], userspace())),
    ];
    let dir = TempDir::new("edge-tree");
    let mut viewers: Vec<SltViewer> = Vec::new();
    for (e, edge) in edges.iter().enumerate() {
        for i in 0..2 {
            let name = format!("e{e}v{i}");
            viewers.push(SltViewer::start(&dir, &name, &edge.viewer_url("1")));
        }
    }
    // The edges pull on demand: once their viewers are in, the origin has two viewers.
    assert!(
        origin.wait_connections("request", 2, Duration::from_secs(10)),
        "the edges did not connect to the origin: {}\nedge log:\n{}",
        origin.metrics(),
        tail_lines(&edges[0].log(), 40)
    );
    sleep_secs(0.5);
    let mut publ = BytePublisher::start(&dir, "pub", &origin.publisher_url("1"), c);
    publ.finish(LINGER);
    for v in &mut viewers {
        v.assert_running("after the stream");
        v.stop();
    }
    for v in &viewers {
        assert_whole(&v.name, &v.output(), c);
    }
    assert_eq!(
        origin.metric("srt_connections_current", &[("mode", "request")]),
        Some(2.0),
        "the origin serves the edges only"
    );
    for edge in &edges {
        assert_eq!(pull_state(edge).0, Some(1.0), "{}", edge.metrics());
        let s = edge.streams();
        let pull = &s[0]["upstream"];
        assert_eq!(pull["state"], "connected", "{s}");
        assert_eq!(pull["upstream"], origin.srt.to_string(), "{s}");
    }
}

/// What an edge viewer got around an outage of its upstream: the clip's packets up to
/// the outage, then (after a hole for what never reached the edge) from `resumed` — the
/// first packet published after it — to the end, in that order, nothing else.
fn assert_two_runs(v: &SltViewer, c: &Clip, resumed: usize) {
    let out = v.output();
    let mut al = ts_align(&out);
    al.packets
        .retain(|p| !(p[1] & 0x1f == 0x1f && p[2] == 0xff));
    let src = c.packets();
    let runs = find_runs(&al.packets, &src);
    let ctx = format!("{}: {}", v.name, runs.describe());
    // The hole cuts a TS packet where an SRT packet (1456 bytes) ended: one resync there.
    assert!(
        runs.unmatched == 0 && al.resyncs <= 1,
        "{ctx}, {} resyncs",
        al.resyncs
    );
    assert_eq!(
        runs.runs.len(),
        2,
        "{ctx}\n  expected two runs: before and after the outage"
    );
    let (a, b) = (runs.runs[0], runs.runs[1]);
    assert_eq!(
        a.src_start, 0,
        "{ctx}\n  the first run starts at the clip's start"
    );
    assert!(a.len > 1000, "{ctx}\n  too little before the outage");
    assert_eq!(
        b.src_start, resumed,
        "{ctx}\n  the second run starts where publishing resumed"
    );
    // srt-live-transmit never sends a last partial chunk (the rest is not cut to one).
    let tail = src.len() - (b.src_start + b.len);
    assert!(
        tail * TS < SLT_CHUNK,
        "{ctx}\n  the second run reaches the clip's end"
    );
}

/// Publishes the clip's first part to `first`, kills `first` with SIGKILL mid-stream
/// (its publisher with it), and publishes the rest to the relay `up` gives once it is
/// up; returns that relay and the first packet of the rest.
fn outage(
    dir: &TempDir,
    c: &Clip,
    edge: &Relay,
    first: &mut Relay,
    up: impl FnOnce(&Relay) -> Relay,
) -> (Relay, usize) {
    let mut p1 = BytePublisher::start(dir, "pub1", &first.publisher_url("1"), c);
    sleep_secs(c.secs * 0.35);
    first.kill();
    p1.kill_silently();
    // Down long enough that the edge finds it silent and its first calls fail.
    sleep_secs(4.0);
    let second = up(first);
    // The edge calls it again by itself (backoff under 5 s); publishing resumes once it
    // has, so that the only hole is the outage.
    let back = wait_until(Duration::from_secs(15), || pull_state(edge).0 == Some(1.0));
    assert!(
        back,
        "the edge did not connect again: {}",
        tail_lines(&edge.log(), 30)
    );
    let rest = c.suffix(dir, c.secs * 0.6);
    let resumed = c.packet_at(c.secs * 0.6);
    let mut p2 = BytePublisher::start(dir, "pub2", &second.publisher_url("1"), &rest);
    p2.finish(LINGER);
    (second, resumed)
}

/// The origin killed with SIGKILL mid-stream and started again: the edge finds it
/// silent, calls it again (with backoff, a new key each time) and its viewers, who stay
/// connected throughout, get one continuous stream with a hole for what was never sent.
#[test]
fn edge_viewers_survive_an_origin_restart() {
    let c = clip();
    let mut origin = Relay::start(userspace());
    let edge = Relay::start(edge_of(&[&origin], userspace()));
    let dir = TempDir::new("edge-restart");
    let mut v = SltViewer::start(&dir, "v", &edge.viewer_url("1"));
    assert!(origin.wait_connections("request", 1, Duration::from_secs(10)));
    sleep_secs(0.5);
    let (origin2, resumed) = outage(&dir, c, &edge, &mut origin, Relay::restart);
    v.assert_running("after the origin's restart");
    v.stop();
    assert_two_runs(&v, c, resumed);
    let (connected, reconnects) = pull_state(&edge);
    assert_eq!(connected, Some(1.0), "{}", edge.metrics());
    assert_eq!(reconnects, Some(1.0), "{}", edge.metrics());
    assert!(
        edge.log().contains("upstream silent"),
        "the edge noticed the silence: {}",
        edge.log()
    );
    assert_eq!(
        origin2.metric("srt_connections_current", &[("mode", "request")]),
        Some(1.0)
    );
}

/// A standby origin: the first stays down, so after three failed attempts the edge pulls
/// from the second, where the publisher went; viewers stay and get one stream.
#[test]
fn a_standby_origin_takes_over_when_the_first_stays_down() {
    let c = clip();
    let mut first = Relay::start(userspace());
    let standby = Relay::start(userspace());
    let edge = Relay::start(edge_of(&[&first, &standby], userspace()));
    let dir = TempDir::new("edge-standby");
    let mut v = SltViewer::start(&dir, "v", &edge.viewer_url("1"));
    assert!(first.wait_connections("request", 1, Duration::from_secs(10)));
    sleep_secs(0.5);
    let standby_srt = standby.srt.to_string();
    let (standby, resumed) = outage(&dir, c, &edge, &mut first, move |_| standby);
    v.assert_running("after the switch to the standby");
    v.stop();
    assert_two_runs(&v, c, resumed);
    let s = edge.streams();
    assert_eq!(s[0]["upstream"]["upstream"], standby_srt, "{s}");
    assert_eq!(s[0]["upstream"]["state"], "connected", "{s}");
    assert!(
        s[0]["upstream"]["failures"].as_u64() >= Some(3),
        "three failures before the switch: {s}"
    );
    assert_eq!(
        standby.metric("srt_connections_current", &[("mode", "request")]),
        Some(1.0)
    );
}

/// An edge of an edge: publisher → origin → edge → edge of the edge → viewer, byte-exact,
/// every hop's pull connected, the middle edge serving only the leaf.
#[test]
fn an_edge_of_an_edge() {
    let c = clip();
    let origin = Relay::start(userspace());
    let edge = Relay::start(edge_of(&[&origin], userspace()));
    let leaf = Relay::start(edge_of(&[&edge], userspace()));
    let dir = TempDir::new("edge-of-edge");
    let mut v = SltViewer::start(&dir, "v", &leaf.viewer_url("1"));
    assert!(
        origin.wait_connections("request", 1, Duration::from_secs(10)),
        "the pulls did not reach the origin: {}",
        tail_lines(&edge.log(), 20)
    );
    sleep_secs(0.5);
    let mut publ = BytePublisher::start(&dir, "pub", &origin.publisher_url("1"), c);
    publ.finish(LINGER);
    v.assert_running("after the stream");
    v.stop();
    assert_whole(&v.name, &v.output(), c);
    for r in [&edge, &leaf] {
        assert_eq!(pull_state(r).0, Some(1.0), "{}", r.metrics());
    }
    assert_eq!(
        edge.metric("srt_connections_current", &[("mode", "request")]),
        Some(1.0),
        "the middle edge serves the leaf"
    );
}

/// An origin whose viewers must encrypt (`view_passphrase`), rotating their keys every
/// 1024 packets: the edge offers keys sealed with the passphrase its `upstream` entry
/// gives, follows the origin's key changes, and serves its own viewers in clear.
#[test]
fn an_edge_pulls_an_encrypted_stream() {
    let c = clip();
    const PASS: &str = "origin-view-passphrase";
    let origin = Relay::start(RelayOpts {
        passphrases: vec![("1".into(), None, Some(PASS.into()))],
        kmrefreshrate: Some(1024),
        kmpreannounce: Some(256),
        ..userspace()
    });
    let mut entry = origin.upstream_entry("1");
    entry["passphrase"] = PASS.into();
    let edge = Relay::start(RelayOpts {
        upstream: vec![("1".into(), vec![entry])],
        ..userspace()
    });
    let dir = TempDir::new("edge-encrypted");
    let mut v = SltViewer::start(&dir, "v", &edge.viewer_url("1"));
    assert!(
        origin.wait_connections("request", 1, Duration::from_secs(10)),
        "the edge did not connect: {}\n{}",
        tail_lines(&edge.log(), 20),
        tail_lines(&origin.log(), 20)
    );
    sleep_secs(0.5);
    let mut publ = BytePublisher::start(&dir, "pub", &origin.publisher_url("1"), c);
    publ.finish(LINGER);
    v.assert_running("after the stream");
    v.stop();
    assert_whole(&v.name, &v.output(), c);
    assert!(
        origin.log().contains("aes_bits=128"),
        "the edge's connection encrypts: {}",
        origin.log()
    );
    assert!(edge.log().contains("encrypted=true"), "{}", edge.log());
    let m = edge.metrics();
    assert_eq!(
        prom_value(
            &m,
            "srt_packets_dropped_total",
            &[("reason", "no_key_for_packet")]
        ),
        None,
        "{m}"
    );
}
