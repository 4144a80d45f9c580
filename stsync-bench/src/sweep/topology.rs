//! The sweep's network namespaces and their veth links: one relay (publisher — relay —
//! viewers), or a tree (publisher — origin — two edges — viewers); see the module doc of
//! `sweep`.

use super::{NS_EDGE0, NS_EDGE1, NS_ORIGIN, NS_PUB, NS_RELAY, NS_VIEW};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Which relays a point runs: `single` (publisher → relay → viewers) or `tree` (publisher
/// → origin → two edges, the viewers split between the edges).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopologyKind {
    #[default]
    Single,
    Tree,
}

impl TopologyKind {
    /// As the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            TopologyKind::Single => "single",
            TopologyKind::Tree => "tree",
        }
    }

    fn namespaces(self) -> &'static [&'static str] {
        match self {
            TopologyKind::Single => &[NS_PUB, NS_RELAY, NS_VIEW],
            TopologyKind::Tree => &[NS_PUB, NS_ORIGIN, NS_EDGE0, NS_EDGE1, NS_VIEW],
        }
    }

    /// veth pairs: (end, its namespace, peer, its namespace).
    fn links(self) -> &'static [(&'static str, &'static str, &'static str, &'static str)] {
        match self {
            TopologyKind::Single => &[
                ("stsb-p0", NS_PUB, "stsb-p1", NS_RELAY),
                ("stsb-v0", NS_VIEW, "stsb-v1", NS_RELAY),
            ],
            TopologyKind::Tree => &[
                ("stsb-p0", NS_PUB, "stsb-p1", NS_ORIGIN),
                ("stsb-o0", NS_ORIGIN, "stsb-e0", NS_EDGE0),
                ("stsb-o1", NS_ORIGIN, "stsb-e1", NS_EDGE1),
                ("stsb-v0", NS_VIEW, "stsb-v1", NS_EDGE0),
                ("stsb-w0", NS_VIEW, "stsb-w1", NS_EDGE1),
            ],
        }
    }

    /// What each namespace is told once the veths are in place and up: both families'
    /// addresses and routes (a point picks one, see `family`).
    fn addresses_and_routes(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TopologyKind::Single => &[
                (NS_PUB, "ip addr add 10.88.1.2/24 dev stsb-p0"),
                (NS_PUB, "ip route add default via 10.88.1.1"),
                (NS_RELAY, "ip addr add 10.88.1.1/24 dev stsb-p1"),
                (NS_RELAY, "ip addr add 10.88.2.1/24 dev stsb-v1"),
                (NS_RELAY, "ip route add 10.88.128.0/20 via 10.88.2.2"),
                (NS_VIEW, "ip addr add 10.88.2.2/24 dev stsb-v0"),
                (NS_VIEW, "ip route add default via 10.88.2.1"),
                (NS_VIEW, "ip route add local 10.88.128.0/20 dev lo"),
                // The same hosts over IPv6 (see `family`).
                (NS_PUB, "ip -6 addr add fd88:1::2/64 dev stsb-p0 nodad"),
                (NS_PUB, "ip -6 route add default via fd88:1::1"),
                (NS_RELAY, "ip -6 addr add fd88:1::1/64 dev stsb-p1 nodad"),
                (NS_RELAY, "ip -6 addr add fd88:2::1/64 dev stsb-v1 nodad"),
                (NS_RELAY, "ip -6 route add fd88:128::/112 via fd88:2::2"),
                (NS_VIEW, "ip -6 addr add fd88:2::2/64 dev stsb-v0 nodad"),
                (NS_VIEW, "ip -6 route add default via fd88:2::1"),
                (NS_VIEW, "ip -6 route add local fd88:128::/112 dev lo"),
            ],
            TopologyKind::Tree => &[
                (NS_PUB, "ip addr add 10.88.1.2/24 dev stsb-p0"),
                (NS_PUB, "ip route add default via 10.88.1.1"),
                (NS_ORIGIN, "ip addr add 10.88.1.1/24 dev stsb-p1"),
                (NS_ORIGIN, "ip addr add 10.88.4.1/24 dev stsb-o0"),
                (NS_ORIGIN, "ip addr add 10.88.5.1/24 dev stsb-o1"),
                (NS_EDGE0, "ip addr add 10.88.4.2/24 dev stsb-e0"),
                (NS_EDGE0, "ip addr add 10.88.2.1/24 dev stsb-v1"),
                (NS_EDGE0, "ip route add 10.88.128.0/20 via 10.88.2.2"),
                (NS_EDGE1, "ip addr add 10.88.5.2/24 dev stsb-e1"),
                (NS_EDGE1, "ip addr add 10.88.3.1/24 dev stsb-w1"),
                (NS_EDGE1, "ip route add 10.88.128.0/20 via 10.88.3.2"),
                (NS_VIEW, "ip addr add 10.88.2.2/24 dev stsb-v0"),
                (NS_VIEW, "ip addr add 10.88.3.2/24 dev stsb-w0"),
                (NS_VIEW, "ip route add local 10.88.128.0/20 dev lo"),
                (NS_PUB, "ip -6 addr add fd88:1::2/64 dev stsb-p0 nodad"),
                (NS_PUB, "ip -6 route add default via fd88:1::1"),
                (NS_ORIGIN, "ip -6 addr add fd88:1::1/64 dev stsb-p1 nodad"),
                (NS_ORIGIN, "ip -6 addr add fd88:4::1/64 dev stsb-o0 nodad"),
                (NS_ORIGIN, "ip -6 addr add fd88:5::1/64 dev stsb-o1 nodad"),
                (NS_EDGE0, "ip -6 addr add fd88:4::2/64 dev stsb-e0 nodad"),
                (NS_EDGE0, "ip -6 addr add fd88:2::1/64 dev stsb-v1 nodad"),
                (NS_EDGE0, "ip -6 route add fd88:128::/112 via fd88:2::2"),
                (NS_EDGE1, "ip -6 addr add fd88:5::2/64 dev stsb-e1 nodad"),
                (NS_EDGE1, "ip -6 addr add fd88:3::1/64 dev stsb-w1 nodad"),
                (NS_EDGE1, "ip -6 route add fd88:128::/112 via fd88:3::2"),
                (NS_VIEW, "ip -6 addr add fd88:2::2/64 dev stsb-v0 nodad"),
                (NS_VIEW, "ip -6 addr add fd88:3::2/64 dev stsb-w0 nodad"),
                (NS_VIEW, "ip -6 route add local fd88:128::/112 dev lo"),
            ],
        }
    }

    /// Whether this topology's namespaces are what is there now (and not the other's).
    fn in_place(self) -> bool {
        let exists = |n: &str| Path::new("/var/run/netns").join(n).exists();
        let other = match self {
            TopologyKind::Single => TopologyKind::Tree,
            TopologyKind::Tree => TopologyKind::Single,
        };
        self.namespaces().iter().all(|n| exists(n))
            && other
                .namespaces()
                .iter()
                .filter(|n| !self.namespaces().contains(n))
                .all(|n| !exists(n))
    }
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns(name: &str, cmd: &str) -> Result<()> {
    let mut args = vec!["ip", "netns", "exec", name];
    args.extend(cmd.split_whitespace());
    sh(&args)
}

/// The sweep's namespaces and their links; every namespace of either topology deleted on
/// drop (also on error or panic).
pub struct Topology;

impl Topology {
    pub fn create(kind: TopologyKind) -> Result<Topology> {
        Topology::remove();
        let topo = Topology;
        for n in kind.namespaces() {
            sh(&["ip", "netns", "add", n])?;
            ns(n, "ip link set lo up")?;
        }
        for &(a, a_ns, b, b_ns) in kind.links() {
            sh(&["ip", "link", "add", a, "type", "veth", "peer", "name", b])?;
            sh(&["ip", "link", "set", a, "netns", a_ns])?;
            sh(&["ip", "link", "set", b, "netns", b_ns])?;
            ns(a_ns, &format!("ip link set {a} up"))?;
            ns(b_ns, &format!("ip link set {b} up"))?;
        }
        for &(n, cmd) in kind.addresses_and_routes() {
            ns(n, cmd)?;
        }
        Ok(topo)
    }

    /// Makes `kind`'s namespaces the ones in place (another topology's point ran before,
    /// or something else on the machine removed ours); the guard that deletes them is the
    /// caller's (see `sweep::run`).
    pub fn ensure(kind: TopologyKind) -> Result<()> {
        if !kind.in_place() {
            eprintln!(
                "bench: setting up the {} topology's namespaces",
                kind.name()
            );
            std::mem::forget(Topology::create(kind)?);
        }
        Ok(())
    }

    fn remove() {
        let mut all: Vec<&str> = TopologyKind::Single.namespaces().to_vec();
        all.extend(TopologyKind::Tree.namespaces());
        all.sort_unstable();
        all.dedup();
        for n in all {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Topology::remove();
    }
}
