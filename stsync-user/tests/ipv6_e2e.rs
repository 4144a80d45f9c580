//! IPv6 with real libsrt clients, in network namespaces with IPv4 and IPv6 addresses
//! (root): a relay listening on `[::]` (dual-stack) keeps the kernel fast path for its
//! IPv4 callers and serves its IPv6 callers from userspace, one stream, every viewer
//! byte-exact; and on the userspace datapath IPv6 publishers and viewers alike.

mod common;
mod ebpf_common;

use common::*;
use ebpf_common::object_or_skip;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
const RELAY_V4: Ipv4Addr = Ipv4Addr::new(10, 86, 2, 1);
const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd86, 0, 0, 2, 0, 0, 0, 1);

/// `pub` → `relay` → `view`: the publisher's link IPv4, the viewers' link both families
/// (addresses without duplicate-address detection, usable at once).
fn hosts() -> Netns {
    let mut ns = Netns::create(&["pub", "relay", "view"]);
    ns.link("relay", "10.86.1.1/24", "pub", "10.86.1.2/24");
    ns.link("relay", "10.86.2.1/24", "view", "10.86.2.2/24");
    for (tag, dev, addr) in [
        ("relay", "veth1a", "fd86:0:0:2::1/64"),
        ("view", "veth1b", "fd86:0:0:2::2/64"),
    ] {
        run(
            "ip",
            &["-n", ns.name(tag), "addr", "add", addr, "dev", dev, "nodad"],
        )
        .expect("ip addr add (IPv6)");
    }
    ns
}

/// Publisher (IPv4) → relay on `[::]` → two IPv4 and two IPv6 srt-live-transmit viewers;
/// with the kernel path, the IPv4 viewers are the kernel's and the IPv6 ones userspace's.
fn dual_stack(datapath: &str) {
    let c = clip();
    let ns = hosts();
    let relay = Relay::start(RelayOpts {
        netns: Some(ns.name("relay").into()),
        srt_ip: Ipv4Addr::new(10, 86, 1, 1),
        srt_listen_ip: Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        datapath: Some(datapath.into()),
        ..RelayOpts::default()
    });
    assert!(
        relay.log().contains(&format!("datapath={datapath}")),
        "{}",
        relay.log()
    );
    let dir = TempDir::new(&format!("ipv6-dual-{datapath}"));
    let view_ns = Some(ns.name("view"));
    let mut viewers = Vec::new();
    for (name, ip) in [
        ("v4a", IpAddr::V4(RELAY_V4)),
        ("v4b", IpAddr::V4(RELAY_V4)),
        ("v6a", IpAddr::V6(RELAY_V6)),
        ("v6b", IpAddr::V6(RELAY_V6)),
    ] {
        let url = relay.url_at(ip, "1", &relay.session("1"), "request");
        viewers.push(SltViewer::start_opts(&dir, name, &url, view_ns, true));
    }
    assert!(
        relay.wait_connections("request", 4, Duration::from_secs(10)),
        "{datapath}: viewers not connected: {}",
        tail_lines(&relay.log(), 20)
    );
    sleep_secs(0.5);
    let mut p = BytePublisher::start_opts(
        &dir,
        "pub",
        &relay.publisher_url("1"),
        c,
        Some(ns.name("pub")),
        false,
    );
    p.finish(LINGER);
    let m = relay.metrics();
    for v in &mut viewers {
        v.assert_running("after the stream");
        v.stop();
    }
    for v in &viewers {
        assert_whole(&format!("{datapath}: {}", v.name), &v.output(), c);
    }
    // IPv4 callers of a dual-stack socket are logged as IPv4.
    let log = relay.log();
    assert!(log.contains("peer=10.86.2.2:"), "{log}");
    assert!(!log.contains("::ffff:"), "{log}");
    assert!(log.contains("peer=[fd86:0:0:2::2]:"), "{log}");
    // Who served whom: per viewer connection, (userspace new packets, kernel clones).
    let mut served: Vec<(f64, f64)> =
        prom_samples(&m, "srt_connection_data_packets_sent_kernel", &[])
            .iter()
            .filter_map(|s| {
                let id = s.label("id")?;
                let get = |n: &str| prom_value(&m, n, &[("id", id)]).unwrap_or(0.0);
                (get("srt_connection_data_packets_recv") == 0.0).then(|| {
                    let fresh = get("srt_connection_data_packets_sent")
                        - get("srt_connection_data_packets_retransmitted");
                    (fresh, s.value)
                })
            })
            .collect();
    served.sort_by(|a, b| a.1.total_cmp(&b.1));
    let line = format!(
        "ipv6 {datapath}: dual-stack [::], per viewer (userspace new, kernel clones): {served:?}"
    );
    eprintln!("{line}");
    record_result(&line);
    assert_eq!(served.len(), 4, "{line}");
    // srt-live-transmit sends the clip in chunks of `SLT_CHUNK` bytes.
    let packets = (c.bytes.len() / SLT_CHUNK) as f64;
    if datapath == "ebpf" {
        // Two viewers (IPv6) entirely from userspace, two (IPv4) from the kernel.
        for &(fresh, kernel) in &served[..2] {
            assert_eq!(kernel, 0.0, "{line}");
            assert!(fresh >= 0.95 * packets, "{line}");
        }
        for &(_, kernel) in &served[2..] {
            assert!(
                kernel >= 0.9 * packets,
                "{line}: the kernel served the IPv4 viewers"
            );
        }
    } else {
        assert!(served.iter().all(|&(_, k)| k == 0.0), "{line}");
    }
}

#[test]
fn dual_stack_listener_serves_both_families_userspace() {
    if !require_root("dual_stack_listener_serves_both_families_userspace") {
        return;
    }
    dual_stack("userspace");
}

#[test]
fn dual_stack_listener_keeps_the_kernel_path_for_ipv4() {
    if object_or_skip("dual_stack_listener_keeps_the_kernel_path_for_ipv4").is_none() {
        return;
    }
    let _serial = serial();
    dual_stack("ebpf");
}
