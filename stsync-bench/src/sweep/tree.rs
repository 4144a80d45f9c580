//! table.md's sections for `--topology tree`: what the extra hop adds to the transit
//! latency (the tree next to the single relay), and what the origin and the edges cost.

use super::Point;

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
}

/// The measured points (no error) of `topology` with `viewers`, at the family, datapath,
/// crypto, workers and bitrate of `like`.
fn matching<'a>(points: &'a [Point], like: &Point, topology: &str, viewers: u32) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| {
            p.error.is_none()
                && p.topology == topology
                && p.family == like.family
                && p.datapath == like.datapath
                && p.crypto == like.crypto
                && p.workers == like.workers
                && p.bitrate_mbps == like.bitrate_mbps
                && p.viewers == viewers
        })
        .collect()
}

/// The datapath column: "IPv6" after it for IPv6 points.
fn datapath(p: &Point) -> String {
    if p.family == "ipv6" {
        format!("{} IPv6", p.datapath)
    } else {
        p.datapath.clone()
    }
}

/// (p50, p99) means over `points`.
fn latency(points: &[&Point]) -> (Option<f64>, Option<f64>) {
    (
        mean(points.iter().map(|p| p.latency_p50_us)),
        mean(points.iter().map(|p| p.latency_p99_us)),
    )
}

/// The tree's sections, empty without tree points.
pub(super) fn tree_tables(points: &[Point]) -> String {
    let tree: Vec<&Point> = points
        .iter()
        .filter(|p| p.topology == "tree" && p.error.is_none())
        .collect();
    if tree.is_empty() {
        return String::new();
    }
    // One row per (datapath, crypto, workers, bitrate, viewers), repeated points averaged.
    let mut keys: Vec<&Point> = Vec::new();
    for p in &tree {
        let same = |k: &&Point| {
            k.family == p.family
                && k.datapath == p.datapath
                && k.crypto == p.crypto
                && k.workers == p.workers
                && k.bitrate_mbps == p.bitrate_mbps
                && k.viewers == p.viewers
        };
        if !keys.iter().any(same) {
            keys.push(p);
        }
    }
    let mut s = "\n## Tree: publisher → origin → 2 edges → viewers\n\n".to_string();
    s += "Transit latency (publisher send → arrival at the viewer) through the tree (two relays on the way) next to the single relay (one): with as many viewers per relay that serves them (N/2), and with as many in all (N). Δ = tree − single: what the extra hop adds. Repeated points: means.\n\n";
    s += "| datapath | workers | Mbit/s | viewers N (per edge) | tree holds | tree p50 µs | tree p99 µs | single N/2: p50 µs | p99 µs | Δp50 µs | Δp99 µs | single N: p50 µs | p99 µs | Δp50 µs | Δp99 µs |\n";
    s += "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for k in &keys {
        let t = matching(points, k, "tree", k.viewers);
        let holds = t.iter().filter(|p| p.holds()).count();
        let (t50, t99) = latency(&t);
        let half = matching(points, k, "single", k.viewers / 2);
        let (h50, h99) = latency(&half);
        let all = matching(points, k, "single", k.viewers);
        let (a50, a99) = latency(&all);
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        s += &format!(
            "| {} | {} | {:.0} | {} ({}) | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            datapath(k),
            k.workers.map_or("-".into(), |w| w.to_string()),
            k.bitrate_mbps,
            k.viewers,
            k.viewers / 2,
            holds,
            t.len(),
            opt(t50, 0),
            opt(t99, 0),
            opt(h50, 0),
            opt(h99, 0),
            opt(diff(t50, h50), 0),
            opt(diff(t99, h99), 0),
            opt(a50, 0),
            opt(a99, 0),
            opt(diff(t50, a50), 0),
            opt(diff(t99, a99), 0),
        );
    }
    s += "\nCost over the window: the origin's CPU (% of one core) and system calls per second, which should not grow with the viewers behind the edges (next to a single relay with 2 viewers: what two edges are to the origin), and each edge's, per viewer it serves.\n\n";
    s += "| datapath | workers | Mbit/s | viewers N (per edge) | origin CPU % | origin syscalls/s | single relay, 2 viewers: CPU % | syscalls/s | edge CPU % (edge 0 / edge 1) | edge % / viewer | edge syscalls/s (0 / 1) | edge syscalls/s / viewer |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|\n";
    for k in &keys {
        let t = matching(points, k, "tree", k.viewers);
        let two = matching(points, k, "single", 2);
        let each = |f: &dyn Fn(&Point) -> &Vec<f64>| -> String {
            let n = t.iter().map(|p| f(p).len()).min().unwrap_or(0);
            if n == 0 {
                return "-".into();
            }
            (0..n)
                .map(|i| format!("{:.1}", mean(t.iter().map(|p| f(p)[i])).unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        s += &format!(
            "| {} | {} | {:.0} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            datapath(k),
            k.workers.map_or("-".into(), |w| w.to_string()),
            k.bitrate_mbps,
            k.viewers,
            k.viewers / 2,
            opt(mean(t.iter().map(|p| p.relay_pct)), 1),
            opt(mean(t.iter().filter_map(|p| p.relay_syscalls_per_s)), 0),
            opt(mean(two.iter().map(|p| p.relay_pct)), 1),
            opt(mean(two.iter().filter_map(|p| p.relay_syscalls_per_s)), 0),
            each(&|p| &p.edge_pct),
            opt(mean(t.iter().filter_map(|p| p.edge_pct_per_viewer)), 3),
            each(&|p| &p.edge_syscalls_per_s),
            opt(
                mean(t.iter().filter_map(|p| p.edge_syscalls_per_viewer_s)),
                1
            ),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(topology: &str, viewers: u32, p50: f64, p99: f64, relay_pct: f64) -> Point {
        let mut p = Point::failed("ebpf", "xdp", viewers, 4_000_000, String::new());
        p.error = None;
        p.offered = 1.0;
        p.on_time_min = Some(1.0);
        p.topology = topology.into();
        p.latency_p50_us = p50;
        p.latency_p99_us = p99;
        p.relay_pct = relay_pct;
        p.relay_syscalls_per_s = Some(1000.0);
        if topology == "tree" {
            p.edge_pct = vec![4.0, 6.0];
            p.edge_pct_per_viewer = Some(0.05);
        }
        p
    }

    #[test]
    fn the_tree_is_set_next_to_the_single_relay() {
        let points = [
            point("single", 2, 30.0, 90.0, 2.0),
            point("single", 100, 40.0, 150.0, 3.0),
            point("single", 200, 50.0, 250.0, 5.0),
            point("tree", 200, 70.0, 200.0, 2.5),
            point("tree", 200, 90.0, 300.0, 2.5),
        ];
        let s = tree_tables(&points);
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("| ebpf")).collect();
        // Latency: the two tree points averaged (80, 250) against single 100 (N/2) and 200 (N).
        assert_eq!(
            rows[0],
            "| ebpf | - | 4 | 200 (100) | 2/2 | 80 | 250 | 40 | 150 | 40 | 100 | 50 | 250 | 30 | 0 |"
        );
        // Cost: the origin next to a single relay with 2 viewers; each edge.
        assert_eq!(
            rows[1],
            "| ebpf | - | 4 | 200 (100) | 2.5 | 1000 | 2.0 | 1000 | 4.0 / 6.0 | 0.050 | - | - |"
        );
        assert!(tree_tables(&points[..3]).is_empty());
    }
}
