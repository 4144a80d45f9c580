//! What a run starts from: its options checked, one session key per connection, the two
//! sockets, the publisher (not started yet), the viewers (not connecting yet) and, with
//! --rx xdp, the kernel sink.

use super::conn::{rand_u32, Conn};
use super::crypto::Crypto;
use super::opts::{Opts, RxMode};
use super::publisher::{new_publisher, PubShared, Publisher};
use super::viewers::Viewer;
use super::window::self_cpu_ticks;
use crate::caller;
use crate::sink::{Sink, SinkParams};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;
use stsync_bench_common::SinkConfig;
use stsync_user::os::{clock, in_netns, udp};

pub(super) struct Setup {
    pub(super) publisher: Publisher,
    pub(super) shared: Arc<PubShared>,
    pub(super) viewers: Vec<Viewer>,
    pub(super) view_fd: OwnedFd,
    /// Viewer i's SRT socket ID is id_base + i.
    pub(super) id_base: u32,
    pub(super) sink: Option<Sink>,
    /// The run's start; payload timestamps count from `base_ns` (CLOCK_MONOTONIC) then.
    pub(super) t0: Instant,
    base_ns: u64,
    /// This process's CPU ticks at t0.
    pub(super) cpu_start: u64,
}

impl Setup {
    pub(super) fn new(o: &Opts, log: &impl Fn(String)) -> Result<Setup> {
        o.media.check()?;
        o.check_families()?;
        let (pub_secret, view_secret) = (o.publish_secret(), o.view_secret());
        for s in pub_secret.iter().chain(view_secret.iter()) {
            s.check()?;
        }
        let n = o.viewers as usize;
        let keys = session_keys(o, n)?;
        let sid =
            |i: usize, mode: &str| caller::stream_id(&o.sid_template, &o.stream, &keys[i], mode);
        let (pub_fd, view_fd) = sockets(o)?;
        let t0 = Instant::now();
        let base_ns = clock::monotonic_ns();
        let cpu_start = self_cpu_ticks();
        let (mut publisher, shared) = new_publisher(
            pub_fd,
            o.pub_relay.unwrap_or(o.relay),
            sid(0, "publish"),
            &o.media,
            0,
            t0,
        );
        if let Some(s) = &pub_secret {
            publisher.encrypt(Crypto::new(s)?);
        }
        let id_base = viewer_id_base(o.viewers);
        let viewers = (0..n)
            .map(|i| {
                let mut conn = Conn::new(
                    id_base + i as u32,
                    o.viewer_relay(i as u32),
                    Some(o.viewer_addr(i as u32)),
                    sid(i + 1, "request"),
                    t0,
                );
                // One key per viewer, as real ones have (a PBKDF2 each: 0.2 ms).
                conn.crypto = view_secret
                    .as_ref()
                    .map(Crypto::new)
                    .transpose()?
                    .map(Box::new);
                Ok(Viewer::new(conn))
            })
            .collect::<Result<_>>()?;
        let sink = match o.rx {
            RxMode::Socket => None,
            RxMode::Xdp if n == 0 => None,
            RxMode::Xdp => Some(load_sink(o, &view_fd, id_base, log)?),
        };
        Ok(Setup {
            publisher,
            shared,
            viewers,
            view_fd,
            id_base,
            sink,
            t0,
            base_ns,
            cpu_start,
        })
    }

    /// An instant on the payloads' clock (CLOCK_MONOTONIC ns).
    pub(super) fn ns_of(&self) -> impl Fn(Instant) -> u64 + Copy + Send + 'static {
        let (t0, base_ns) = (self.t0, self.base_ns);
        move |i: Instant| base_ns + i.saturating_duration_since(t0).as_nanos() as u64
    }
}

/// One session key per connection: the publisher's, then the viewers'.
fn session_keys(o: &Opts, n: usize) -> Result<Vec<String>> {
    Ok(match o.http {
        Some(http) => {
            crate::http::mint_sessions(o.pub_netns.as_deref(), http, &o.stream, &o.token, n + 1)?
        }
        None => vec![o.key.clone(); n + 1],
    })
}

/// The wildcard address of `to`'s family, port `port`.
fn any_of(to: SocketAddr, port: u16) -> SocketAddr {
    let ip: IpAddr = match to {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    SocketAddr::new(ip, port)
}

/// The publisher's socket and the viewers' shared one, each in its namespace and of the
/// family of the relay it calls.
fn sockets(o: &Opts) -> Result<(OwnedFd, OwnedFd)> {
    let pub_fd = in_netns(o.pub_netns.as_deref(), || {
        udp::udp_socket(any_of(o.pub_relay.unwrap_or(o.relay), 0), 4 << 20)
    })
    .context("publisher socket")?;
    let view_fd = in_netns(o.view_netns.as_deref(), || {
        udp::udp_socket(any_of(o.relay, o.viewer_port), 64 << 20)
    })
    .context("viewer socket")?;
    Ok((pub_fd, view_fd))
}

/// A random base for the viewers' socket IDs, with room for all of them below 2^31.
fn viewer_id_base(viewers: u32) -> u32 {
    let id_base = (rand_u32() & 0x3FFF_FFFF) | 0x4000_0000;
    if id_base.checked_add(viewers).is_none() {
        0x4000_0000
    } else {
        id_base
    }
}

/// --rx xdp: the kernel sink, attached where the relay's packets to the viewers arrive.
fn load_sink(o: &Opts, view_fd: &OwnedFd, id_base: u32, log: &impl Fn(String)) -> Result<Sink> {
    if o.sink_iface.is_empty() {
        bail!("--rx xdp needs --sink-iface (where the relay's packets arrive)");
    }
    if o.second_relay.is_some_and(|b| b.port() != o.relay.port()) {
        bail!("--second-relay must have --relay's port (the kernel sink matches one port)");
    }
    let object = o
        .sink_object
        .clone()
        .unwrap_or_else(crate::sink::default_object_path);
    // Two seconds of packets per viewer: the loop drains every millisecond or so; a
    // retransmission is only useful within the latency.
    let ring = ((o.media.pkts_per_sec() * 2.0) as u32)
        .clamp(1024, 1 << 16)
        .next_power_of_two();
    let port = udp::local_port(view_fd).context("viewer socket address")?;
    let mut sink = Sink::load(&SinkParams {
        object: &object,
        attach: o.sink_attach,
        config: SinkConfig {
            relay_ip: sink_addr(o.relay.ip()),
            viewer_ip_base: sink_addr(o.viewer_ip),
            viewers: o.viewers,
            id_base,
            ring_mask: ring - 1,
            split: o.split(),
            relay_ip_b: o.second_relay.map_or([0; 4], |b| sink_addr(b.ip())),
            relay_port: o.relay.port().to_be(),
            viewer_port: port.to_be(),
            _pad: 0,
        },
        ring,
    })?;
    for iface in &o.sink_iface {
        sink.attach(o.view_netns.as_deref(), iface)?;
    }
    log(format!(
        "kernel sink ({:?}) on {}: {ring} slots per viewer",
        o.sink_attach,
        o.sink_iface.join(", ")
    ));
    Ok(sink)
}

/// An address as the kernel sink's configuration holds it: four network-order words, an
/// IPv4 address IPv4-mapped (`stsync_common::frame::addr`'s form).
pub(crate) fn sink_addr(ip: IpAddr) -> [u32; 4] {
    let b = match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}
