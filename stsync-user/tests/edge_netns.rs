//! Edge relays across network namespaces (root, the eBPF object built): an origin and
//! two edges on hosts of their own, each edge's viewers on a host behind it, the edges on
//! the kernel path. One edge's link from the origin drops 5 % of what the origin sends
//! (nftables; this kernel has no netem): its receiver NAKs, the origin retransmits, and
//! its viewers still get every byte. Loopback tests of the same feature: `edge_e2e`.

mod common;
mod ebpf_common;

use common::*;
use ebpf_common::object_or_skip;
use std::net::Ipv4Addr;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
const VIEWERS_PER_EDGE: usize = 2;

/// `origin` linked to `edge0` (10.`net`.1.0/24) and `edge1` (10.`net`.2.0/24); `view<i>`
/// behind `edge<i>` (10.`net`.`3+i`.0/24). Returns the namespaces and the origin's
/// address as each edge reaches it.
fn tree(net: u8) -> (Netns, [Ipv4Addr; 2]) {
    let mut ns = Netns::create(&["origin", "edge0", "edge1", "view0", "view1"]);
    for i in 0..2u8 {
        let (edge, view) = (format!("edge{i}"), format!("view{i}"));
        ns.link(
            "origin",
            &format!("10.{net}.{}.1/24", i + 1),
            &edge,
            &format!("10.{net}.{}.2/24", i + 1),
        );
        ns.link(
            &edge,
            &format!("10.{net}.{}.1/24", i + 3),
            &view,
            &format!("10.{net}.{}.2/24", i + 3),
        );
    }
    (ns, [1, 2].map(|i| Ipv4Addr::new(10, net, i, 1)))
}

/// The origin as edge `i` reaches it, as config.json's `upstream` entry.
fn upstream(origin: &Relay, at: Ipv4Addr) -> serde_json::Value {
    serde_json::json!({
        "srt": format!("{at}:{}", origin.srt.port()),
        "api": format!("http://{at}:{}", origin.http.port()),
        "token": origin.token("1"),
    })
}

/// Publisher → origin → two edges (kernel path) → two srt-live-transmit viewers each,
/// byte-exact; 5 % of the origin's datagrams to edge 0 dropped.
#[test]
fn origin_to_two_edges_on_the_kernel_path_with_loss_on_one_link() {
    let test = "origin_to_two_edges_on_the_kernel_path_with_loss_on_one_link";
    if object_or_skip(test).is_none() {
        return;
    }
    let _serial = serial();
    let c = clip();
    let (ns, origin_at) = tree(83);
    let origin = Relay::start(RelayOpts {
        netns: Some(ns.name("origin").into()),
        srt_ip: Ipv4Addr::LOCALHOST,
        srt_bind: Some(Ipv4Addr::UNSPECIFIED),
        http_ip: Some(Ipv4Addr::UNSPECIFIED),
        latency_ms: Some(LOSS_LATENCY_MS),
        ..RelayOpts::default()
    });
    let edges: Vec<Relay> = (0..2u8)
        .map(|i| {
            Relay::start(RelayOpts {
                netns: Some(ns.name(&format!("edge{i}")).into()),
                srt_ip: Ipv4Addr::new(10, 83, i + 3, 1),
                srt_bind: Some(Ipv4Addr::UNSPECIFIED),
                datapath: Some("ebpf".into()),
                latency_ms: Some(LOSS_LATENCY_MS),
                upstream: vec![("1".into(), vec![upstream(&origin, origin_at[i as usize])])],
                ..RelayOpts::default()
            })
        })
        .collect();
    for e in &edges {
        assert!(e.log().contains("datapath=ebpf"), "{}", e.log());
    }
    let dir = TempDir::new("edge-netns");
    let mut viewers: Vec<SltViewer> = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        for k in 0..VIEWERS_PER_EDGE {
            let view_ns = Some(ns.name(&format!("view{i}")));
            let name = format!("e{i}v{k}");
            viewers.push(SltViewer::start_opts(
                &dir,
                &name,
                &e.viewer_url("1"),
                view_ns,
                true,
            ));
        }
    }
    assert!(
        origin.wait_connections("request", 2, Duration::from_secs(10)),
        "the edges did not connect: {}\n{}",
        origin.metrics(),
        tail_lines(&edges[0].log(), 30)
    );
    sleep_secs(0.5);
    let padded = c.padded(&dir, 0.5);
    let mut p = BytePublisher::start_opts(
        &dir,
        "pub",
        &origin.publisher_url("1"),
        &padded,
        Some(ns.name("origin")),
        false,
    );
    // 1 s in (the receivers have their first RTT sample): loss on the origin → edge 0 link.
    sleep_secs(1.0);
    ns.add_loss(
        "edge0",
        "input",
        &format!("udp sport {}", origin.srt.port()),
        LOSS_PCT,
    );
    p.finish(LINGER);
    for v in &mut viewers {
        v.assert_running("after the stream");
        v.stop();
    }
    let dropped = ns.loss_counter("edge0");
    let mut report = format!("edge netns: nft dropped {dropped} datagrams origin → edge 0;");
    for (i, e) in edges.iter().enumerate() {
        let m = e.metrics();
        let get = |n: &str| prom_value(&m, n, &[]).unwrap_or(0.0);
        let up = |n: &str| prom_value(&m, n, &[("stream", "1")]).unwrap_or(0.0);
        let (recv, lost) = (
            up("srt_upstream_data_packets_recv"),
            up("srt_upstream_data_packets_lost"),
        );
        let (clones, failures) = (
            get("stsync_kernel_clones_total"),
            get("stsync_kernel_clone_failures_total"),
        );
        report += &format!(
            " edge {i}: from upstream {recv} packets ({lost} lost, repaired), kernel clones {clones}, failures {failures};"
        );
        assert_eq!(failures, 0.0, "edge {i}: clone failures");
        // The kernel cloned (nearly) every packet to each viewer: userspace only before
        // the handover and for retransmissions.
        assert!(
            clones >= 0.9 * recv * VIEWERS_PER_EDGE as f64,
            "edge {i}: the kernel cloned {clones} of {recv} packets × {VIEWERS_PER_EDGE} viewers"
        );
        if i == 0 {
            assert!(
                lost > 0.0,
                "edge 0: the lossy link lost nothing: {dropped} dropped"
            );
        }
    }
    record_result(&report);
    eprintln!("{report}");
    assert!(dropped > 50, "the loss rule dropped only {dropped}");
    for v in &viewers {
        assert_whole(&v.name, &v.output(), c);
        let st = v.last_stats().expect("libsrt stats");
        assert_eq!(
            st.recv_dropped, 0,
            "{}: libsrt dropped packets: {st:?}",
            v.name
        );
    }
}

/// A delay set on the origin reaches the edge's viewers, and the edge adds its own: the
/// same bytes published to two streams, stream 2 delayed 500 ms on the origin and 200 ms
/// more on the edge; the edge's stream-2 viewer reaches each byte 700 ms (± 50) after its
/// stream-1 viewer. Origin and edge in one namespace, on its loopback; both datapaths.
#[test]
fn a_delay_set_on_the_origin_reaches_edge_viewers() {
    let c = clip();
    let mut datapaths = vec!["userspace"];
    if object_or_skip("a_delay_set_on_the_origin_reaches_edge_viewers").is_some() {
        datapaths.push("ebpf");
    } else if !require_root("a_delay_set_on_the_origin_reaches_edge_viewers") {
        return;
    }
    for datapath in datapaths {
        let ns = Netns::create(&["solo"]);
        let name = ns.name("solo").to_string();
        let base = RelayOpts {
            netns: Some(name.clone()),
            datapath: Some(datapath.into()),
            ..RelayOpts::default()
        };
        let origin = Relay::start(RelayOpts {
            stream_delays: vec![("2".into(), 500)],
            ..base.clone()
        });
        let edge = Relay::start(RelayOpts {
            stream_delays: vec![("2".into(), 200)],
            upstream: ["1", "2"]
                .map(|s| (s.to_string(), vec![origin.upstream_entry(s)]))
                .to_vec(),
            ..base
        });
        let dir = TempDir::new(&format!("edge-delay-{datapath}"));
        let mut a = SltViewer::start_opts(&dir, "a", &edge.viewer_url("1"), Some(&name), true);
        let mut b = SltViewer::start_opts(&dir, "b", &edge.viewer_url("2"), Some(&name), true);
        assert!(
            origin.wait_connections("request", 2, Duration::from_secs(10)),
            "{datapath}: the edge did not pull both streams: {}",
            tail_lines(&edge.log(), 30)
        );
        sleep_secs(1.0);
        let until = std::time::Instant::now() + secs(c.secs + 8.0);
        let (ga, ha) = Growth::watch(a.out.clone(), until);
        let (gb, hb) = Growth::watch(b.out.clone(), until);
        let urls = [origin.publisher_url("1"), origin.publisher_url("2")];
        let mut p = TeePublisher::start(&dir, &urls, c, &name);
        p.finish(c);
        a.stop();
        b.stop();
        let (_, _) = (ha.join(), hb.join());
        let lag = lag_ms(&ga, &gb, c, (0.1, 0.9));
        record_result(&format!(
            "edge delay {datapath}: origin 500 ms + edge 200 ms: the edge's stream-2 viewer reached each byte {lag:.1} ms after its stream-1 viewer"
        ));
        assert!(
            (lag - 700.0).abs() <= 50.0,
            "{datapath}: the edge's delayed viewer lags {lag:.1} ms, expected 700 ± 50"
        );
        for v in [&a, &b] {
            assert_whole(&format!("{datapath}: {}", v.name), &v.output(), c);
        }
    }
}
