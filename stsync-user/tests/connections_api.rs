//! The connections API (`GET /v1/connections`, `GET /v1/streams/{id}/connections`,
//! `DELETE /v1/connections/{id}`) and the per-connection metrics, against real libsrt
//! clients and, for loss reports, raw SRT callers that NAK on purpose (issue 18).

mod common;
mod ebpf_common;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stsync_common::srt::ctrl;
use stsync_user::api::{Client, ConnectionInfo};
use stsync_user::srt::caller::{self, HsAnswer};
use stsync_user::srt::packet::{encode_loss, write_control, write_data};
use stsync_user::srt::seq::Seq;

const ADMIN: &str = "0d5e8a3c71f94b26a8e1c07d3f5b92e4";

fn with_admin(opts: RelayOpts) -> Relay {
    Relay::start(RelayOpts {
        admin_token: Some(ADMIN.into()),
        ..opts
    })
}

/// The API with the admin token.
fn admin(relay: &Relay) -> Client {
    Client::new(&relay.api_url(), Some(ADMIN))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn by_mode<'a>(list: &'a [ConnectionInfo], mode: &str) -> Vec<&'a ConnectionInfo> {
    list.iter().filter(|c| c.mode == mode).collect()
}

/// The value of `srt_connection_{name}` for connection `id` in the scrape `m`.
fn conn_metric(m: &str, name: &str, id: u32) -> Option<f64> {
    prom_value(
        m,
        &format!("srt_connection_{name}"),
        &[("id", &id.to_string())],
    )
}

/// Within `tolerance` (a fraction) of `want`.
fn near(got: f64, want: f64, tolerance: f64) -> bool {
    (got / want - 1.0).abs() <= tolerance
}

/// A real publisher and two real viewers: the API lists all three with their stream,
/// mode, peer, latency, datapath and rates, and /v1/metrics says the same under the same ids.
#[test]
fn connections_are_listed_with_their_statistics() {
    let c = clip();
    // Two workers: the listing merges theirs.
    let relay = with_admin(RelayOpts {
        datapath: Some("userspace".into()),
        workers: Some(2),
        ..RelayOpts::default()
    });
    let dir = TempDir::new("conn-list");
    let before = unix_now();
    // One viewer asks for more latency than the relay's 120 ms: the larger is agreed.
    let slow_url = format!("{}&latency=300", relay.viewer_url("1"));
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "v300", &slow_url);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    assert!(v1.wait_bytes(200_000, secs(8.0)), "v1: {}", v1.stderr());
    assert!(v2.wait_bytes(200_000, secs(8.0)), "v300: {}", v2.stderr());
    // Two whole rate intervals into the stream.
    sleep_secs(2.2);
    let list = admin(&relay).connections().expect("GET /v1/connections");
    let m = relay.metrics();
    let after = unix_now();
    assert_eq!(list.len(), 3, "{list:#?}");
    let (pubs, viewers) = (by_mode(&list, "publish"), by_mode(&list, "request"));
    assert_eq!((pubs.len(), viewers.len()), (1, 2), "{list:#?}");
    // What the clip's pacing sends, in SRT bytes (a 16-byte header per 1456-byte payload).
    let stream_bps = c.rate as f64 * 8.0 * (1456.0 + 16.0) / 1456.0;
    for conn in &list {
        let s = &conn.stats;
        let what = format!("{} {}: {conn:#?}", conn.mode, conn.id);
        assert_eq!(conn.stream, "1", "{what}");
        let peer: SocketAddr = conn.peer.parse().expect("peer is an address");
        assert_eq!(peer.ip().to_string(), "127.0.0.1", "{what}");
        assert_ne!(peer.port(), 0, "{what}");
        assert!(
            (before - 1..=after).contains(&conn.connected_since),
            "{what}: connected_since not between {before} and {after}"
        );
        assert_eq!(conn.datapath, "userspace", "{what}");
        // libsrt announces the smaller of its receive buffer and its flight flag size.
        assert!(s.peer_buffer_size.is_some_and(|b| b >= 32), "{what}");
        // The same numbers under the same id on /v1/metrics (counters taken a moment later).
        let metric = |name: &str| {
            conn_metric(&m, name, conn.id).unwrap_or_else(|| panic!("{what}: no {name}"))
        };
        assert_eq!(metric("latency"), conn.latency_ms as f64 / 1e3, "{what}");
        assert_eq!(metric("connected_since") as u64, conn.connected_since);
        assert_eq!(
            Some(metric("peer_buffer_size") as u32),
            s.peer_buffer_size,
            "{what}"
        );
        for (name, api) in [
            ("data_packets_sent", s.data_packets_sent),
            ("data_packets_recv", s.data_packets_recv),
            ("ctrl_packets_recv", s.ctrl_packets_recv),
        ] {
            let got = metric(name);
            assert!(
                got >= api as f64 && got <= api as f64 * 1.1 + 200.0,
                "{what}: {name} {got} on /v1/metrics, {api} in the API"
            );
        }
        for name in ["send_rate_bps", "recv_rate_bps"] {
            let api = if name == "send_rate_bps" {
                s.send_rate_bps
            } else {
                s.recv_rate_bps
            };
            assert!(near(metric(name), api as f64, 0.3), "{what}: {name}");
        }
        let info = prom_samples(&m, "srt_connection_info", &[("id", &conn.id.to_string())]);
        assert_eq!(info.len(), 1, "{what}");
        assert!(info[0].has_labels(&[
            ("stream", "1"),
            ("mode", conn.mode.as_str()),
            ("peer", conn.peer.as_str()),
            ("datapath", "userspace"),
        ]));
    }
    let pc = &pubs[0].stats;
    assert_eq!(pubs[0].latency_ms, 120, "srt-live-transmit's default");
    assert!(
        near(pc.recv_rate_bps as f64, stream_bps, 0.3),
        "publisher receive rate {} vs the clip's {stream_bps:.0} bit/s",
        pc.recv_rate_bps
    );
    let mut latencies: Vec<u64> = viewers.iter().map(|v| v.latency_ms).collect();
    latencies.sort();
    assert_eq!(latencies, [120, 300], "the latency each viewer agreed");
    for v in &viewers {
        let s = &v.stats;
        assert!(
            near(s.send_rate_bps as f64, stream_bps, 0.3),
            "viewer {}: send rate {} vs the clip's {stream_bps:.0} bit/s",
            v.id,
            s.send_rate_bps
        );
        assert!(s.peer_buffer_available.is_some_and(|b| b > 0), "{v:#?}");
        assert!(s.playout_lead_ms.is_some(), "{v:#?}");
    }
    eprintln!(
        "[check] connections: publisher {:.2} Mbit/s in, viewers {:.2} / {:.2} Mbit/s out, clip {:.2} Mbit/s",
        pc.recv_rate_bps as f64 / 1e6,
        viewers[0].stats.send_rate_bps as f64 / 1e6,
        viewers[1].stats.send_rate_bps as f64 / 1e6,
        stream_bps / 1e6
    );
    // One stream's connections with its own token; another stream's token is refused.
    let own = relay
        .api(Some("1"), |c| c.stream_connections("1"))
        .expect("stream 1's connections with its token");
    assert_eq!(own.len(), 3);
    let other = relay.api(Some("2"), |c| c.stream_connections("1"));
    assert_eq!(other.unwrap_err().status(), Some(401));
    let none = relay.api(Some("2"), |c| c.stream_connections("2")).unwrap();
    assert!(none.is_empty(), "{none:#?}");
    p.stop();
    v1.stop();
    v2.stop();
}

/// DELETE closes one viewer: it stops receiving (srt-live-transmit exits on the SHUTDOWN),
/// the other goes on, its id is gone from the API and the metrics, and its stream ID is
/// refused as used (2403). Every refusal is JSON.
#[test]
fn a_kicked_viewer_is_gone_and_cannot_come_back() {
    let c = clip();
    // Two workers: the kick goes to the one that owns the connection.
    let relay = with_admin(RelayOpts {
        workers: Some(2),
        ..RelayOpts::default()
    });
    let dir = TempDir::new("conn-kick");
    // The one to kick connects first, so its id is the only one listed then.
    let kicked_url = relay.viewer_url("1");
    let mut kicked = SltViewer::start(&dir, "kicked", &kicked_url);
    assert!(relay.wait_connections("request", 1, secs(5.0)));
    let list = admin(&relay).connections().unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    let id = list[0].id;
    let mut other = SltViewer::start(&dir, "other", &relay.viewer_url("1"));
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    assert!(kicked.wait_bytes(100_000, secs(8.0)), "{}", kicked.stderr());
    assert!(other.wait_bytes(100_000, secs(8.0)), "{}", other.stderr());
    let path = format!("/v1/connections/{id}");
    let bearer = |t: &str| format!("Bearer {t}");
    let del = |path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        relay.request("DELETE", path, &headers).expect("DELETE")
    };
    assert_json_error(&del(&path, None), 401, "no token");
    assert_json_error(&del(&path, Some("not-a-token-at-all")), 401, "wrong token");
    assert_json_error(
        &del(&path, Some(relay.token("2"))),
        404,
        "another stream's token",
    );
    assert_json_error(&del("/v1/connections/abc", Some(ADMIN)), 400, "non-numeric");
    assert_json_error(&del("/v1/connections/7", Some(ADMIN)), 404, "unknown id");
    assert_json_error(
        &del("/v1/connections/7", Some(relay.token("1"))),
        404,
        "unknown id, stream token",
    );
    // The stream's own token may close its connections (the client: 204).
    relay
        .api(Some("1"), move |c| c.close_connection(id))
        .expect("DELETE with the stream's token");
    assert_json_error(&del(&path, Some(ADMIN)), 404, "closed already");
    // srt-live-transmit exits on the SHUTDOWN.
    assert!(
        wait_until(secs(5.0), || !kicked.running()),
        "the kicked viewer still runs: {}",
        kicked.stderr()
    );
    let was = other.received_len();
    sleep_secs(1.0);
    assert!(
        other.received_len() > was + 50_000,
        "the other viewer stopped receiving"
    );
    other.assert_running("after the other's kick");
    let list = admin(&relay).connections().unwrap();
    assert!(list.iter().all(|c| c.id != id), "{list:#?}");
    assert_eq!(list.len(), 2, "{list:#?}");
    let m = relay.metrics();
    assert!(!m.contains(&format!("id=\"{id}\"")), "{m}");
    let kicks = prom_value(&m, "srt_connections_closed_total", &[("reason", "kicked")]);
    assert_eq!(kicks, Some(1.0));
    // Back with the same stream ID: its session key was spent.
    expect_reject(
        &relay,
        &dir,
        "a kicked viewer's stream ID",
        &kicked_url,
        APP_TEXT,
        2403,
    );
    kicked.stop();
    other.stop();
    p.stop();
}

/// Without an `admin_token`, the relay-wide listing is 403 whatever the token; a stream's
/// own listing still works with its token.
#[test]
fn the_relay_wide_listing_needs_an_admin_token() {
    let relay = Relay::start_default();
    let auth = format!("Bearer {}", relay.token("1"));
    let r = relay
        .request("GET", "/v1/connections", &[("Authorization", &auth)])
        .unwrap();
    assert_json_error(&r, 403, "no admin_token configured");
    let r = relay
        .request("GET", "/v1/connections", &[("Authorization", "Bearer x")])
        .unwrap();
    assert_json_error(&r, 403, "no admin_token configured, any token");
    let r = relay.get("/v1/streams/1/connections").unwrap();
    assert_json_error(&r, 401, "stream listing without a token");
    let r = relay
        .request(
            "GET",
            "/v1/streams/9/connections",
            &[("Authorization", &auth)],
        )
        .unwrap();
    assert_json_error(&r, 404, "unknown stream");
    let list = relay.api(Some("1"), |c| c.stream_connections("1")).unwrap();
    assert!(list.is_empty());
}

/// A raw SRT caller, for what libsrt does not do on demand on loopback: skip packets (the
/// relay NAKs it and gives up on them) and report losses (the relay retransmits).
struct RawCaller {
    sock: UdpSocket,
    relay: SocketAddr,
    /// The relay's socket ID for this connection.
    id: u32,
}

impl RawCaller {
    fn connect(relay: &Relay, sid: &str) -> Result<RawCaller, u32> {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let to = SocketAddr::V4(relay.srt);
        let (own, isn) = (rand::random::<u32>() & 0x3FFF_FFFF | 1, Seq::new(0));
        let mut b = Vec::new();
        caller::induction(&mut b, own, isn, 0, to);
        let hs = |b: &[u8]| {
            sock.send_to(b, to).unwrap();
            let mut buf = [0u8; 1500];
            let n = sock.recv(&mut buf).expect("a handshake answer");
            caller::answer(&buf[16..n])
        };
        let HsAnswer::Cookie(cookie) = hs(&b) else {
            panic!("no cookie");
        };
        b.clear();
        caller::conclusion(&mut b, own, isn, 0, to, cookie, 120, sid.as_bytes(), None);
        match hs(&b) {
            HsAnswer::Accepted(id) => Ok(RawCaller {
                sock,
                relay: to,
                id,
            }),
            HsAnswer::Rejected(code) => Err(code),
            other => panic!("{other:?}"),
        }
    }

    fn control(&self, typ: u16, info: u32, body: &[u32]) {
        let mut b = Vec::new();
        write_control(&mut b, typ, info, 0, self.id, body);
        self.sock.send_to(&b, self.relay).unwrap();
    }

    fn data(&self, seq: u32, ts: u32) {
        let mut b = Vec::new();
        let msg = 0xC000_0000 | (seq + 1);
        write_data(&mut b, Seq::new(seq), msg, ts, self.id, &[0x47; 1316]);
        self.sock.send_to(&b, self.relay).unwrap();
    }

    /// Data sequence numbers waiting on the socket (control packets skipped).
    fn take_data(&self) -> Vec<u32> {
        self.sock.set_nonblocking(true).unwrap();
        let mut seqs = Vec::new();
        let mut buf = [0u8; 1600];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let w0 = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if n >= 16 && w0 & 0x8000_0000 == 0 {
                seqs.push(w0);
            }
        }
        self.sock.set_nonblocking(false).unwrap();
        seqs
    }
}

/// Loss both ways, made by raw callers: a publisher that skips 5 packets is sent NAKs and
/// they are counted as dropped once the relay gives up on them; a viewer's NAK is counted
/// and answered with retransmissions. The API and /v1/metrics agree.
#[test]
fn naks_and_drops_are_counted() {
    let relay = with_admin(RelayOpts::default());
    let viewer = RawCaller::connect(
        &relay,
        &format!("#!::r=2,s={},m=request", relay.session("2")),
    )
    .expect("viewer accepted");
    let publisher = RawCaller::connect(
        &relay,
        &format!("#!::r=2,s={},m=publish", relay.session("2")),
    )
    .expect("publisher accepted");
    let mut got: Vec<u32> = Vec::new();
    let mut nak_sent = false;
    // 400 packets at 200/s, 100..=104 never sent.
    for i in 0..400u32 {
        if !(100..=104).contains(&i) {
            publisher.data(i, i * 5000);
        }
        if i % 10 == 9 {
            got.extend(viewer.take_data());
            let max = got.iter().max().copied();
            if let Some(last) = max.filter(|_| !nak_sent && got.len() > 50) {
                // The last three packets the viewer had, reported lost before it
                // acknowledges them: sent again.
                let mut words = Vec::new();
                encode_loss(&mut words, Seq::new(last - 2), Seq::new(last));
                viewer.control(ctrl::NAK, 0, &words);
                nak_sent = true;
            }
            let ack = max.map_or(0, |s| s + 1);
            viewer.control(ctrl::ACK, i, &[ack, 1000, 100, 8000, 200, 1000, 2_000_000]);
            publisher.control(ctrl::KEEPALIVE, 0, &[0]);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(nak_sent, "the viewer got {} packets", got.len());
    sleep_secs(1.2);
    let list = admin(&relay).connections().unwrap();
    let m = relay.metrics();
    let one = |mode: &str| by_mode(&list, mode)[0].clone();
    let (p, v) = (one("publish"), one("request"));
    eprintln!(
        "[check] raw publisher: {:?}\n[check] raw viewer: {:?}",
        p.stats, v.stats
    );
    assert!(p.stats.naks_sent >= 1, "{p:#?}");
    assert_eq!(p.stats.data_packets_lost, 5, "{p:#?}");
    assert_eq!(
        p.stats.data_packets_dropped, 5,
        "given up after the latency"
    );
    assert_eq!(p.stats.naks_recv, 0);
    assert_eq!(v.stats.naks_recv, 1, "{v:#?}");
    assert_eq!(v.stats.naks_sent, 0);
    assert_eq!(v.stats.data_packets_lost, 3, "{v:#?}");
    // On the kernel path the relay may not have read the newest one yet when the report
    // comes (it asks again later): at least the older ones are resent at once.
    assert!(v.stats.data_packets_retransmitted >= 1, "{v:#?}");
    assert_eq!(v.stats.peer_buffer_available, Some(8000));
    for (c, name, api) in [
        (&p, "naks_sent", p.stats.naks_sent),
        (&p, "data_packets_dropped", 5),
        (&v, "naks_recv", 1),
        (
            &v,
            "data_packets_retransmitted",
            v.stats.data_packets_retransmitted,
        ),
        (&v, "peer_buffer_available", 8000),
    ] {
        assert_eq!(
            conn_metric(&m, name, c.id),
            Some(api as f64),
            "{name} of {}",
            c.id
        );
    }
}

/// With `metrics_max_connections: 2` and four connections, the two oldest have series of
/// their own, `srt_connection_series_omitted` counts the other two, and the API lists all.
#[test]
fn per_connection_series_are_capped() {
    let relay = with_admin(RelayOpts {
        metrics_max_connections: Some(2),
        ..RelayOpts::default()
    });
    let dir = TempDir::new("conn-cap");
    let mut viewers = Vec::new();
    // Ids in the order they connected: one at a time, each found as the new one listed.
    let mut order: Vec<u32> = Vec::new();
    for i in 0..4 {
        let stream = if i % 2 == 0 { "1" } else { "2" };
        let url = relay.viewer_url(stream);
        viewers.push(SltViewer::start(&dir, &format!("v{i}"), &url));
        assert!(
            relay.wait_connections("request", i + 1, secs(5.0)),
            "viewer {i} not connected"
        );
        let list = admin(&relay).connections().unwrap();
        let new: Vec<u32> = list
            .iter()
            .map(|c| c.id)
            .filter(|id| !order.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "{list:#?}");
        order.push(new[0]);
    }
    let list = admin(&relay).connections().unwrap();
    assert_eq!(list.len(), 4, "{list:#?}");
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "srt_connection_series_omitted", &[]),
        Some(2.0)
    );
    let ids = |name: &str| -> Vec<u32> {
        let mut v: Vec<u32> = prom_samples(&m, name, &[])
            .iter()
            .filter_map(|s| s.label("id")?.parse().ok())
            .collect();
        v.sort();
        v
    };
    // The two oldest keep theirs, in every per-connection family.
    let mut oldest = order[..2].to_vec();
    oldest.sort();
    assert_eq!(
        ids("srt_connection_info"),
        oldest,
        "connected in order {order:?}"
    );
    assert_eq!(ids("srt_connection_ctrl_packets_recv"), oldest);
    assert_eq!(ids("srt_connection_send_rate_bps"), oldest);
    for v in viewers.iter_mut() {
        v.stop();
    }
}

/// On the eBPF datapath, viewers handed to the kernel show `datapath: kernel` (the
/// publisher stays `userspace`), with the kernel's clones counted and in their send rate.
#[test]
fn kernel_served_viewers_say_so() {
    if ebpf_common::object_or_skip("kernel_served_viewers_say_so").is_none() {
        return;
    }
    let ns = Netns::create(&["connk"]);
    let solo = ns.name("connk");
    let relay = Relay::start(RelayOpts {
        netns: Some(solo.to_string()),
        datapath: Some("ebpf".into()),
        ..RelayOpts::default()
    });
    let dir = TempDir::new("conn-kernel");
    let c = clip();
    let mut viewers: Vec<SltViewer> = (0..2)
        .map(|i| {
            let url = relay.viewer_url("1");
            SltViewer::start_opts(&dir, &format!("v{i}"), &url, Some(solo), false)
        })
        .collect();
    let url = relay.publisher_url("1");
    let mut p = BytePublisher::start_opts(&dir, "pub", &url, c, Some(solo), false);
    let list = || relay.api(Some("1"), |c| c.stream_connections("1")).unwrap();
    // Handed over once the publisher's first packets mapped them (see tests/ebpf_e2e.rs).
    let handed = wait_until(secs(8.0), || {
        let l = list();
        by_mode(&l, "request").len() == 2
            && by_mode(&l, "request")
                .iter()
                .all(|v| v.datapath == "kernel")
    });
    assert!(handed, "viewers not on the kernel path: {:#?}", list());
    sleep_secs(2.2);
    let l = list();
    assert_eq!(by_mode(&l, "publish")[0].datapath, "userspace");
    let stream_bps = c.rate as f64 * 8.0;
    for v in by_mode(&l, "request") {
        let s = &v.stats;
        assert_eq!(v.datapath, "kernel", "{v:#?}");
        assert!(s.data_packets_sent_kernel > 100, "{v:#?}");
        // From the ACKs the kernel answered.
        assert!(s.peer_buffer_available.is_some_and(|b| b > 0), "{v:#?}");
        assert!(
            near(s.send_rate_bps as f64, stream_bps, 0.35),
            "viewer {}: send rate {} (kernel clones at the mean packet size) vs {stream_bps:.0}",
            v.id,
            s.send_rate_bps
        );
    }
    let m = relay.metrics();
    let kernel = prom_samples(&m, "srt_connection_info", &[("datapath", "kernel")]);
    assert_eq!(kernel.len(), 2, "{m}");
    p.stop();
    for v in viewers.iter_mut() {
        v.stop();
    }
}
