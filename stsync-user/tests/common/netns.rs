//! Network namespaces.

use super::*;

/// Runs `f` inside network namespace `ns` (`stsync_user::os::in_netns`: on a thread of its
/// own): sockets it creates (e.g. HTTP requests to a relay inside the namespace) live
/// there. Panics if the namespace cannot be entered.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    stsync_user::os::in_netns(Some(ns), || Ok::<_, std::io::Error>(f()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A set of network namespaces (`stt-<pid>-<n>-<tag>`) joined by veth pairs, deleted on
/// drop together with everything in them (veths, nft tables, leftover processes).
/// Addresses (10.77.x.y) exist only inside these namespaces.
pub struct Netns {
    names: Vec<(String, String)>, // (tag, name)
    veths: u32,
}

impl Netns {
    pub fn create(tags: &[&str]) -> Netns {
        let base = unique("stt");
        let mut ns = Netns {
            names: Vec::new(),
            veths: 0,
        };
        for tag in tags {
            let name = format!("{base}-{tag}");
            run("ip", &["netns", "add", &name]).expect("ip netns add");
            ns.names.push((tag.to_string(), name.clone()));
            run("ip", &["-n", &name, "link", "set", "lo", "up"]).expect("lo up");
        }
        ns
    }

    pub fn name(&self, tag: &str) -> &str {
        &self
            .names
            .iter()
            .find(|(t, _)| t == tag)
            .unwrap_or_else(|| panic!("no netns {tag}"))
            .1
    }

    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(|(_, n)| n.clone()).collect()
    }

    /// A veth pair between namespaces `a` and `b` with addresses like "10.77.1.1/24".
    pub fn link(&mut self, a: &str, a_cidr: &str, b: &str, b_cidr: &str) {
        let (na, nb) = (self.name(a).to_string(), self.name(b).to_string());
        let i = self.veths;
        self.veths += 1;
        let (ia, ib) = (format!("veth{i}a"), format!("veth{i}b"));
        run(
            "ip",
            &[
                "link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns", &nb,
            ],
        )
        .expect("ip link add veth");
        run("ip", &["-n", &na, "addr", "add", a_cidr, "dev", &ia]).expect("addr a");
        run("ip", &["-n", &nb, "addr", "add", b_cidr, "dev", &ib]).expect("addr b");
        run("ip", &["-n", &na, "link", "set", &ia, "up"]).expect("up a");
        run("ip", &["-n", &nb, "link", "set", &ib, "up"]).expect("up b");
    }

    /// Runs an nft script (`nft -f -`) inside namespace `tag`.
    pub fn nft(&self, tag: &str, script: &str) -> Result<String, String> {
        run_with_stdin(
            "ip",
            &["netns", "exec", self.name(tag), "nft", "-f", "-"],
            Some(script),
        )
    }

    /// Random loss with nftables inside namespace `tag`: on `hook` ("input" or "output")
    /// drop `pct` % of packets matching `expr` (e.g. "udp sport 9999"). Counted, see
    /// `loss_counter`.
    pub fn add_loss(&self, tag: &str, hook: &str, expr: &str, pct: u32) {
        let script = format!(
            "add table inet lossy\n\
             add chain inet lossy {hook}_loss {{ type filter hook {hook} priority 0; }}\n\
             add rule inet lossy {hook}_loss {expr} numgen random mod 100 lt {pct} counter drop\n"
        );
        self.nft(tag, &script).expect("nft loss rule");
    }

    /// Counts packets matching `expr` on `hook` in namespace `tag` (before any loss rule),
    /// under `label`; read with `count`. E.g. SRT DROPREQs from the relay:
    /// `udp sport 9999 @th,64,16 0x8007`.
    pub fn add_count(&self, tag: &str, hook: &str, expr: &str, label: &str) {
        let script = format!(
            "add table inet stt_count\n\
             add chain inet stt_count {hook}_count {{ type filter hook {hook} priority -10; }}\n\
             add rule inet stt_count {hook}_count {expr} counter comment \"{label}\"\n"
        );
        self.nft(tag, &script).expect("nft count rule");
    }

    pub fn count(&self, tag: &str, label: &str) -> u64 {
        self.counted(tag, "stt_count", Some(label))
    }

    /// Packets dropped so far by the loss rules in namespace `tag`.
    pub fn loss_counter(&self, tag: &str) -> u64 {
        self.counted(tag, "lossy", None)
    }

    /// The sum of the packet counters of nft table `table` in namespace `tag` (only the
    /// rules commented `label`, if given).
    fn counted(&self, tag: &str, table: &str, label: Option<&str>) -> u64 {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                self.name(tag),
                "nft",
                "list",
                "table",
                "inet",
                table,
            ],
        )
        .unwrap_or_default();
        let comment = label.map(|l| format!("comment \"{l}\""));
        out.lines()
            .filter(|l| comment.as_ref().is_none_or(|c| l.contains(c.as_str())))
            .filter_map(|l| {
                let i = l.find("counter packets ")?;
                l[i + 16..].split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, name) in self.names.iter().rev() {
            // Anything still running in our namespace was started by this test.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if let Err(e) = run("ip", &["netns", "del", name]) {
                eprintln!("[harness] ip netns del {name}: {e}");
            }
        }
    }
}

/// The loss tests' namespaces: `relay`, with `pub` and `view` each linked to it on a subnet
/// of its own under 10.`net`. Returns them and the relay's address on each leg: the
/// publisher reaches it as 10.`net`.2.1, the viewers as 10.`net`.1.1.
pub fn two_legs(net: u8) -> (Netns, Ipv4Addr, Ipv4Addr) {
    let mut ns = Netns::create(&["relay", "pub", "view"]);
    ns.link(
        "relay",
        &format!("10.{net}.2.1/24"),
        "pub",
        &format!("10.{net}.2.2/24"),
    );
    ns.link(
        "relay",
        &format!("10.{net}.1.1/24"),
        "view",
        &format!("10.{net}.1.2/24"),
    );
    (
        ns,
        Ipv4Addr::new(10, net, 2, 1),
        Ipv4Addr::new(10, net, 1, 1),
    )
}

/// `base` for a relay in `two_legs`' `relay` namespace: listening on every address (its
/// URLs name `view_side`), with the loss tests' latency.
pub fn two_legs_relay(ns: &Netns, view_side: Ipv4Addr, base: RelayOpts) -> RelayOpts {
    RelayOpts {
        netns: Some(ns.name("relay").to_string()),
        srt_ip: view_side,
        srt_bind: Some(Ipv4Addr::UNSPECIFIED),
        latency_ms: Some(LOSS_LATENCY_MS),
        ..base
    }
}

/// The loss (percent) the loss tests' nftables rules drop.
pub const LOSS_PCT: u32 = 5;
/// The relay's `latency_ms` for these tests. libsrt receivers repeat a loss report only
/// every few tens to 300 ms, so at the 120 ms default a packet whose retransmission is
/// lost too is sometimes given up: measured with libsrt's own srt-live-transmit as the
/// relay in the same setup (5 % loss on the viewer's input), 1 of 5 runs lost a packet.
/// 500 ms leaves room for several reports; the test is about the relay repairing loss.
pub const LOSS_LATENCY_MS: u64 = 500;
