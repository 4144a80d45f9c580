//! `--family`: the address family of a point. The sweep's namespaces carry both families
//! (IPv6 addresses from fd88::/16, ULA, added with `nodad`); a point's relays listen on
//! the family's wildcard address and its publisher and viewers call them over it.
//!
//! | | IPv4 | IPv6 |
//! |---|---|---|
//! | publisher | 10.88.1.2 | fd88:1::2 |
//! | relay (publisher side) | 10.88.1.1 | fd88:1::1 |
//! | relay (viewer side) | 10.88.2.1 | fd88:2::1 |
//! | stsb-view | 10.88.2.2 | fd88:2::2 |
//! | viewer i | 10.88.128.1 + i (local 10.88.128.0/20) | fd88:128::1 + i (local fd88:128::/112) |
//! | tree: origin → edge 0 / 1 | 10.88.4.1 / 10.88.5.1 | fd88:4::1 / fd88:5::1 |
//! | tree: edge 1 (viewer side) | 10.88.3.1 | fd88:3::1 |

use super::Point;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

const fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd88, net, 0, 0, 0, 0, 0, host))
}

const fn v4(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 88, net, host))
}

impl Family {
    /// As the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family's address in network `net` (10.88.net.0/24, fd88:net::/64).
    fn addr(self, net: u8, host: u8) -> IpAddr {
        match self {
            Family::Ipv4 => v4(net, host),
            // fd88:128:: for the viewers' range, written like its IPv4 10.88.128.
            Family::Ipv6 => v6(
                u16::from_str_radix(&net.to_string(), 16).expect("decimal digits"),
                host.into(),
            ),
        }
    }

    /// The relay's address as the publisher reaches it (the tree: the origin's).
    pub fn relay_pub(self) -> IpAddr {
        self.addr(1, 1)
    }

    /// The relay's address as the viewers reach it (the tree: edge 0's).
    pub fn relay_view(self) -> IpAddr {
        self.addr(2, 1)
    }

    /// Viewer 0's address (viewer i: + i).
    pub fn viewer_base(self) -> IpAddr {
        self.addr(128, 1)
    }

    /// The tree: each edge's address towards the viewers.
    pub fn edge_view(self, edge: usize) -> IpAddr {
        self.addr([2, 3][edge], 1)
    }

    /// The tree: the origin's address as edge `edge` reaches it.
    pub fn edge_upstream(self, edge: usize) -> IpAddr {
        self.addr([4, 5][edge], 1)
    }

    /// Where a relay listens (`port`): the family's wildcard address. `[::]` is
    /// dual-stack (the relay's sockets are whatever bindv6only says).
    pub fn any(self, port: u16) -> SocketAddr {
        match self {
            Family::Ipv4 => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            Family::Ipv6 => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        }
    }

    /// The tag's prefix for this family's points ("" for IPv4: the names of before).
    pub fn tag(self) -> &'static str {
        match self {
            Family::Ipv4 => "",
            Family::Ipv6 => "v6-",
        }
    }
}

/// `ip` and `port` as a URL or a config's `host:port` writes them (`[…]` around IPv6).
pub fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// The points of `v` that held; all of them if none did.
fn held<'p>(v: &[&'p Point]) -> Vec<&'p Point> {
    let h: Vec<&Point> = v.iter().copied().filter(|p| p.holds()).collect();
    if h.is_empty() {
        v.to_vec()
    } else {
        h
    }
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
}

/// "a / b" of one figure of the IPv4 and the IPv6 points.
fn pair(a: Option<f64>, b: Option<f64>, prec: usize) -> String {
    format!("{} / {}", opt(a, prec), opt(b, prec))
}

/// table.md's IPv4-against-IPv6 section: one row per point measured in both families
/// (same datapath, crypto, workers, topology, bitrate and viewers; repeated points
/// averaged), the cost per viewer of each and how much more IPv6's is. Empty without
/// IPv6 points.
pub(super) fn family_tables(points: &[Point]) -> String {
    let ok: Vec<&Point> = points.iter().filter(|p| p.error.is_none()).collect();
    if !ok.iter().any(|p| p.family == "ipv6") {
        return String::new();
    }
    let same = |a: &Point, b: &Point| {
        a.datapath == b.datapath
            && a.crypto == b.crypto
            && a.workers == b.workers
            && a.topology == b.topology
            && a.bitrate_mbps == b.bitrate_mbps
            && a.viewers == b.viewers
    };
    let mut keys: Vec<&Point> = Vec::new();
    for p in &ok {
        if !keys.iter().any(|k| same(k, p)) {
            keys.push(p);
        }
    }
    let mut s = "\n## IPv4 and IPv6\n\n".to_string();
    s += "Each point in both families (IPv4 / IPv6). Repeated points: means over those that held (all of them if none did); n = points averaged, holds = held / measured. Cost per viewer = (relay + softirq) % of one core / viewers, and the relay process's alone; Δ = IPv6 / IPv4 − 1 of the first. Clones and clone failures: the relay's kernel counters over its life (warm-up and drain included).\n\n";
    s += "| datapath | topology | workers | Mbit/s | viewers | n | holds | on time min | delivered mean | relay+softirq % | (relay+softirq) % / viewer | Δ / viewer | relay % / viewer | syscalls/s | syscalls/s / viewer | clones | clone failures | backlog drops | p99 µs |\n";
    s += "|---|---|---:|---:|---:|---|---|---|---|---|---|---:|---|---|---|---|---|---|---|\n";
    for k in keys {
        let of = |fam: &str| -> Vec<&Point> {
            ok.iter()
                .copied()
                .filter(|p| same(k, p) && p.family == fam)
                .collect()
        };
        // The figures are the points that held (a point that did not measured a relay
        // that was not doing the job: e.g. viewers left in userspace); all of them if none
        // did. `holds` says how many of how many.
        let (all_a, all_b) = (of("ipv4"), of("ipv6"));
        let (a, b) = (held(&all_a), held(&all_b));
        let m =
            |v: &[&Point], f: &dyn Fn(&Point) -> Option<f64>| mean(v.iter().filter_map(|p| f(p)));
        let both = |f: &dyn Fn(&Point) -> Option<f64>, prec: usize| pair(m(&a, f), m(&b, f), prec);
        let viewers = f64::from(k.viewers.max(1));
        let per_viewer = |p: &Point| Some(p.relay_total_pct / viewers);
        let delta = m(&a, &per_viewer)
            .zip(m(&b, &per_viewer))
            .filter(|(x, _)| *x > 0.0)
            .map(|(x, y)| format!("{:+.1} %", (y / x - 1.0) * 100.0))
            .unwrap_or_else(|| "-".into());
        let holds =
            |v: &[&Point]| format!("{}/{}", v.iter().filter(|p| p.holds()).count(), v.len());
        s += &format!(
            "| {} | {} | {} | {:.0} | {} | {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            k.datapath,
            k.topology,
            k.workers.map_or("-".into(), |w| w.to_string()),
            k.bitrate_mbps,
            k.viewers,
            a.len(),
            b.len(),
            holds(&all_a),
            holds(&all_b),
            both(&|p| p.on_time_min, 4),
            both(&|p| Some(p.delivery_mean), 4),
            both(&|p| Some(p.relay_total_pct), 1),
            both(&per_viewer, 4),
            delta,
            both(&|p| Some(p.relay_pct_per_viewer), 4),
            both(&|p| p.relay_syscalls_per_s, 0),
            both(&|p| p.syscalls_per_viewer_s, 1),
            both(&|p| p.kernel_clones.map(|c| c as f64), 0),
            both(&|p| p.kernel_clone_failures.map(|c| c as f64), 0),
            both(&|p| p.backlog_drops.map(|c| c as f64), 0),
            both(&|p| Some(p.latency_p99_us), 0),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_name_the_same_hosts() {
        let f4 = Family::Ipv4;
        let f6 = Family::Ipv6;
        assert_eq!(f4.relay_pub().to_string(), "10.88.1.1");
        assert_eq!(f6.relay_pub().to_string(), "fd88:1::1");
        assert_eq!(f4.viewer_base().to_string(), "10.88.128.1");
        assert_eq!(f6.viewer_base().to_string(), "fd88:128::1");
        assert_eq!(f6.edge_view(1).to_string(), "fd88:3::1");
        assert_eq!(f6.edge_upstream(0).to_string(), "fd88:4::1");
        assert_eq!(host_port(f6.relay_view(), 9999), "[fd88:2::1]:9999");
        assert_eq!(host_port(f4.relay_view(), 9999), "10.88.2.1:9999");
        assert_eq!(f6.any(9998).to_string(), "[::]:9998");
    }

    fn point(family: &str, viewers: u32, total: f64, relay: f64) -> Point {
        let mut p = Point::failed("ebpf", "xdp", viewers, 4_000_000, String::new());
        p.error = None;
        p.offered = 1.0;
        p.on_time_min = Some(1.0);
        p.family = family.into();
        p.relay_total_pct = total;
        p.relay_pct_per_viewer = relay / f64::from(viewers);
        p.kernel_clones = Some(1000);
        p
    }

    #[test]
    fn each_point_is_set_next_to_the_other_family() {
        let points = [
            point("ipv4", 100, 20.0, 5.0),
            point("ipv6", 100, 21.0, 5.0),
            point("ipv6", 100, 23.0, 5.0),
            point("ipv4", 1000, 100.0, 10.0),
            // Did not hold: not in the means.
            {
                let mut p = point("ipv6", 100, 90.0, 50.0);
                p.on_time_min = Some(0.5);
                p
            },
        ];
        let s = family_tables(&points);
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("| ebpf")).collect();
        assert_eq!(rows.len(), 2);
        // 0.2 % per viewer over IPv4, 0.22 over IPv6 (two points): +10 %.
        assert!(
            rows[0].starts_with("| ebpf | single | - | 4 | 100 | 1 / 2 | 1/1 / 2/3 |"),
            "{}",
            rows[0]
        );
        assert!(
            rows[0].contains("| 0.2000 / 0.2200 | +10.0 % |"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("| 0.1000 / - | - |"), "{}", rows[1]);
        assert!(family_tables(&points[..1]).is_empty());
    }
}
