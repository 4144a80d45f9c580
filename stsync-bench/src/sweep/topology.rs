//! The sweep's three network namespaces and their veth links.

use super::{NS_PUB, NS_RELAY, NS_VIEW};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

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

/// What each namespace is told once the veths are in place (see the module doc of `sweep`).
const ADDRESSES_AND_ROUTES: [(&str, &str); 12] = [
    (NS_PUB, "ip addr add 10.88.1.2/24 dev stsb-p0"),
    (NS_PUB, "ip link set stsb-p0 up"),
    (NS_PUB, "ip route add default via 10.88.1.1"),
    (NS_RELAY, "ip addr add 10.88.1.1/24 dev stsb-p1"),
    (NS_RELAY, "ip addr add 10.88.2.1/24 dev stsb-v1"),
    (NS_RELAY, "ip link set stsb-p1 up"),
    (NS_RELAY, "ip link set stsb-v1 up"),
    (NS_RELAY, "ip route add 10.88.128.0/20 via 10.88.2.2"),
    (NS_VIEW, "ip addr add 10.88.2.2/24 dev stsb-v0"),
    (NS_VIEW, "ip link set stsb-v0 up"),
    (NS_VIEW, "ip route add default via 10.88.2.1"),
    (NS_VIEW, "ip route add local 10.88.128.0/20 dev lo"),
];

/// The three namespaces and their links; deleted on drop (also on error or panic).
pub struct Topology;

impl Topology {
    pub fn create() -> Result<Topology> {
        Topology::remove();
        let topo = Topology;
        for n in [NS_PUB, NS_RELAY, NS_VIEW] {
            sh(&["ip", "netns", "add", n])?;
            ns(n, "ip link set lo up")?;
        }
        sh(&[
            "ip", "link", "add", "stsb-p0", "type", "veth", "peer", "name", "stsb-p1",
        ])?;
        sh(&["ip", "link", "set", "stsb-p0", "netns", NS_PUB])?;
        sh(&["ip", "link", "set", "stsb-p1", "netns", NS_RELAY])?;
        sh(&[
            "ip", "link", "add", "stsb-v0", "type", "veth", "peer", "name", "stsb-v1",
        ])?;
        sh(&["ip", "link", "set", "stsb-v0", "netns", NS_VIEW])?;
        sh(&["ip", "link", "set", "stsb-v1", "netns", NS_RELAY])?;
        for (n, cmd) in ADDRESSES_AND_ROUTES {
            ns(n, cmd)?;
        }
        Ok(topo)
    }

    fn remove() {
        for n in [NS_PUB, NS_RELAY, NS_VIEW] {
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
