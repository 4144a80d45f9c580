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

fn assert_whole(v: &SltViewer, c: &Clip) {
    let whole = Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    };
    assert_contiguous(&v.name, &v.output(), c, whole);
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
        assert_whole(v, c);
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
