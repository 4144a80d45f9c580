//! The load generator's options (`stsync-loadgen --help`), and the stream every run sends
//! (`Media`, shared with the soak): in a file of their own so the parts of a run can take
//! them without reaching back into `loadgen`.

use super::crypto::Secret;
use crate::sink::Attach;
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};

#[derive(Args, Debug, Clone)]
pub struct Opts {
    /// SRT address the viewers connect to (IPv4 or IPv6: the viewers use its family).
    #[arg(long, default_value = "127.0.0.1:9999")]
    pub relay: SocketAddr,
    /// A second SRT address for the viewers (the sweep's tree topology: one edge relay
    /// each): the first ⌈N/2⌉ viewers connect to --relay, the others here (same port as
    /// --relay, for the kernel sink).
    #[arg(long)]
    pub second_relay: Option<SocketAddr>,
    /// SRT address the publisher connects to (default: --relay); of either family.
    #[arg(long)]
    pub pub_relay: Option<SocketAddr>,
    /// The relay's HTTP API, to mint one session key per connection (stsync-proxy). Without
    /// it, `{key}` in the template is --key.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Bearer token of the stream (for --http).
    #[arg(long, default_value = "")]
    pub token: String,
    /// Stream (resource) ID, `{stream}` in the template.
    #[arg(long, default_value = "1")]
    pub stream: String,
    /// Static session key, `{key}` in the template when --http is not given.
    #[arg(long, default_value = "")]
    pub key: String,
    /// Stream ID template: `{stream}`, `{key}` and `{mode}` (publish | request) are filled
    /// in. Any server's syntax works, e.g. `{stream}/{mode}` or `#!::r=live/{stream},m={mode}`.
    #[arg(long, default_value = "#!::r={stream},s={key},m={mode}")]
    pub sid_template: String,
    /// Number of viewers.
    #[arg(long, default_value_t = 1)]
    pub viewers: u32,
    #[command(flatten)]
    pub media: Media,
    /// Encrypt the publisher and the viewers with this passphrase (SRT's `passphrase`, 10
    /// to 79 bytes): each sends a fresh salt and key sealed with it in its conclusion
    /// (KMREQ) and checks the relay's KMRSP; the publisher encrypts its payloads, viewers
    /// decrypt the payload's index and time of every packet (the first 20 bytes) and the
    /// whole payload of every 64th through the socket (`--rx socket`).
    #[arg(long)]
    pub passphrase: Option<String>,
    /// The publisher's passphrase, if not --passphrase's (e.g. alone: encrypted publisher,
    /// clear viewers).
    #[arg(long)]
    pub publish_passphrase: Option<String>,
    /// The viewers' passphrase, if not --passphrase's (e.g. alone: clear publisher,
    /// encrypted viewers).
    #[arg(long)]
    pub view_passphrase: Option<String>,
    /// Key length of every encrypting connection: 16, 24 or 32 bytes (AES-128/192/256).
    #[arg(long, default_value_t = 16)]
    pub pbkeylen: usize,
    /// Seconds of streaming after every viewer is connected, before measuring.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Milliseconds of streaming after the window, so late retransmissions still count.
    #[arg(long, default_value_t = 600)]
    pub drain_ms: u64,
    /// Source address of viewer 0; viewer i uses this + i (IPv6: added to the address's
    /// low 32 bits). Of --relay's family.
    #[arg(long, default_value = "127.0.1.1")]
    pub viewer_ip: IpAddr,
    /// UDP port of the viewers' shared socket (0: any).
    #[arg(long, default_value_t = 0)]
    pub viewer_port: u16,
    /// Network namespace of the publisher socket (and of the HTTP requests).
    #[arg(long)]
    pub pub_netns: Option<String>,
    /// Network namespace of the viewers' socket.
    #[arg(long)]
    pub view_netns: Option<String>,
    /// PID of the relay: its CPU and RSS are sampled over the window.
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// PIDs of further relays (the tree topology's edges): each one's CPU and RSS (and,
    /// with --count-syscalls, system calls) over the window, in the report's `more_relays`.
    #[arg(long, value_delimiter = ',')]
    pub watch_more: Vec<u32>,
    /// Viewers that start their handshake per millisecond.
    #[arg(long, default_value_t = 20)]
    pub connect_rate: u32,
    /// Longest sleep between two passes of the event loop, µs. The generator does not wake
    /// per datagram: it sleeps until the next publisher packet or this tick, then drains the
    /// sockets with recvmmsg (latency uses kernel receive timestamps, so batching does not
    /// skew it). 0 = wake on every datagram.
    #[arg(long, default_value_t = 1000)]
    pub tick_us: u64,
    /// How the viewers receive data packets: `socket` (recvmmsg on their shared UDP socket)
    /// or `xdp` (the kernel sink stsync-bench-ebpf on --sink-iface records and drops them;
    /// control packets still reach the socket). `xdp` needs root.
    #[arg(long, value_enum, default_value_t = RxMode::Socket)]
    pub rx: RxMode,
    /// The benchmark's eBPF object, with the sink and the syscall counter (default:
    /// target/bpfel-unknown-none/release/stsync-bench-ebpf next to this executable's build
    /// directory).
    #[arg(long)]
    pub sink_object: Option<std::path::PathBuf>,
    /// Interface(s) (in --view-netns) where the relays' packets to the viewers arrive
    /// (comma-separated: the sink is attached to each).
    #[arg(long, value_delimiter = ',')]
    pub sink_iface: Vec<String>,
    /// Hook of the sink: native XDP, generic XDP or TC ingress.
    #[arg(long, value_enum, default_value_t = Attach::Tc)]
    pub sink_attach: Attach,
    /// Count the --watch-pid process's system calls over the window.
    #[arg(long)]
    pub count_syscalls: bool,
    /// How: a raw tracepoint program from the bench eBPF object (--sink-object), or perf.
    #[arg(long, value_enum, default_value_t = crate::syscalls::Method::Bpf)]
    pub syscall_counter: crate::syscalls::Method,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Include one row per viewer in the JSON report.
    #[arg(long)]
    pub per_viewer: bool,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

impl Opts {
    /// Viewers from this index on connect to --second-relay (all of them to --relay
    /// without it).
    pub fn split(&self) -> u32 {
        match self.second_relay {
            Some(_) => self.viewers.div_ceil(2),
            None => self.viewers,
        }
    }

    /// Viewer `i`'s source address: --viewer-ip + i.
    pub fn viewer_addr(&self, i: u32) -> IpAddr {
        match self.viewer_ip {
            IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(i).into()),
            IpAddr::V6(a) => {
                let b = u128::from(a);
                // Within the low 32 bits, as the kernel sink counts viewers.
                let low = (b as u32).wrapping_add(i);
                IpAddr::V6((b & !0xFFFF_FFFF | u128::from(low)).into())
            }
        }
    }

    /// The viewers' addresses, the relays' and the publisher's relay's are of one family
    /// each way: the viewers share one socket, the sink one configuration.
    pub fn check_families(&self) -> Result<()> {
        let v6 = self.relay.is_ipv6();
        if self.viewer_ip.is_ipv6() != v6 || self.second_relay.is_some_and(|b| b.is_ipv6() != v6) {
            bail!("--viewer-ip and --second-relay must be of --relay's family");
        }
        if let IpAddr::V6(a) = self.viewer_ip {
            if (u128::from(a) as u32)
                .checked_add(self.viewers.saturating_sub(1))
                .is_none()
            {
                bail!(
                    "--viewer-ip {a}: its low 32 bits overflow with {} viewers",
                    self.viewers
                );
            }
        }
        Ok(())
    }

    /// Where viewer `i` connects.
    pub fn viewer_relay(&self, i: u32) -> SocketAddr {
        match self.second_relay {
            Some(b) if i >= self.split() => b,
            _ => self.relay,
        }
    }

    fn secret(&self, own: &Option<String>) -> Option<Secret> {
        own.as_ref().or(self.passphrase.as_ref()).map(|p| Secret {
            passphrase: p.clone(),
            key_len: self.pbkeylen,
        })
    }

    /// The publisher's passphrase and key length, if it encrypts.
    pub fn publish_secret(&self) -> Option<Secret> {
        self.secret(&self.publish_passphrase)
    }

    /// The viewers' passphrase and key length, if they encrypt.
    pub fn view_secret(&self) -> Option<Secret> {
        self.secret(&self.view_passphrase)
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    Socket,
    Xdp,
}

pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.trim()
        .parse::<f64>()
        .map(|v| (v * mult) as u64)
        .map_err(|e| format!("{s}: {e}"))
}
/// The stream the publisher sends, and the latency every client announces.
#[derive(Args, Debug, Clone, Serialize)]
pub struct Media {
    /// Publisher bitrate in bits per second of SRT payload (accepts k/M suffixes).
    #[arg(long, default_value = "4M", value_parser = parse_rate)]
    pub bitrate: u64,
    /// SRT payload bytes per packet.
    #[arg(long, default_value_t = 1316)]
    pub payload: usize,
    /// Latency (TSBPD) announced in HSREQ, ms: how long a viewer waits for a lost packet,
    /// and a packet later than this is not on time.
    #[arg(long, default_value_t = 120)]
    pub latency_ms: u16,
}

impl Media {
    pub fn check(&self) -> Result<()> {
        if self.payload < crate::caller::MIN_PAYLOAD
            || self.payload > stsync_common::srt::MAX_PAYLOAD
        {
            bail!(
                "--payload must be {}..={} bytes",
                crate::caller::MIN_PAYLOAD,
                stsync_common::srt::MAX_PAYLOAD
            );
        }
        if self.bitrate == 0 {
            bail!("--bitrate must be positive");
        }
        Ok(())
    }

    /// Packets per second the publisher sends.
    pub fn pkts_per_sec(&self) -> f64 {
        self.bitrate as f64 / (self.payload as f64 * 8.0)
    }
}

impl RxMode {
    /// As the option is spelled.
    pub fn name(self) -> &'static str {
        match self {
            RxMode::Socket => "socket",
            RxMode::Xdp => "xdp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: Opts,
    }

    fn opts(args: &[&str]) -> Opts {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
            .expect("options")
            .o
    }

    #[test]
    fn a_second_relay_takes_the_second_half_of_the_viewers() {
        let one = opts(&["--relay", "10.0.0.1:9999", "--viewers", "5"]);
        assert_eq!(one.split(), 5);
        assert!((0..5).all(|i| one.viewer_relay(i) == one.relay));
        let two = opts(&[
            "--relay",
            "10.0.0.1:9999",
            "--second-relay",
            "10.0.1.1:9999",
            "--viewers",
            "5",
            "--sink-iface",
            "a,b",
            "--watch-more",
            "7,8",
        ]);
        assert_eq!(two.split(), 3);
        let to: Vec<String> = (0..5).map(|i| two.viewer_relay(i).to_string()).collect();
        assert_eq!(
            to,
            [
                "10.0.0.1:9999",
                "10.0.0.1:9999",
                "10.0.0.1:9999",
                "10.0.1.1:9999",
                "10.0.1.1:9999"
            ]
        );
        assert_eq!(two.sink_iface, ["a", "b"]);
        assert_eq!(two.watch_more, [7, 8]);
    }

    #[test]
    fn ipv6_viewers_count_up_in_the_low_32_bits() {
        let o = opts(&[
            "--relay",
            "[fd88:2::1]:9999",
            "--viewer-ip",
            "fd88:128::ffff:fffe",
            "--viewers",
            "2",
        ]);
        o.check_families().unwrap();
        assert_eq!(o.viewer_relay(1).to_string(), "[fd88:2::1]:9999");
        let a: Vec<String> = (0..2).map(|i| o.viewer_addr(i).to_string()).collect();
        assert_eq!(a, ["fd88:128::ffff:fffe", "fd88:128::ffff:ffff"]);
        // One more would carry out of the low 32 bits, where the kernel sink counts.
        let over = opts(&[
            "--relay",
            "[fd88:2::1]:9999",
            "--viewer-ip",
            "fd88:128::ffff:fffe",
            "--viewers",
            "3",
        ]);
        assert!(over.check_families().is_err());
        // IPv4 as before.
        let v4 = opts(&["--relay", "10.0.0.1:9999", "--viewer-ip", "10.88.128.1"]);
        v4.check_families().unwrap();
        assert_eq!(v4.viewer_addr(255).to_string(), "10.88.129.0");
        // One family for the viewers and their relays.
        let mixed = opts(&["--relay", "10.0.0.1:9999", "--viewer-ip", "fd88:128::1"]);
        assert!(mixed.check_families().is_err());
    }
}
