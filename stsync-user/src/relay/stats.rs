//! What the relay counts, as plain numbers in each connection and stream, and the snapshot
//! [`Relay::stats`](super::Relay::stats) copies them into for whoever exports them (the
//! Prometheus collector in `metrics.rs`, the HTTP API). Nothing here is shared or locked:
//! the relay owns its counters and a reader gets a copy.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// What a connection is doing, as the `mode` label of `srt_connections_current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnMode {
    Handshake,
    Request,
    Publish,
}

impl ConnMode {
    pub const ALL: [ConnMode; 3] = [ConnMode::Handshake, ConnMode::Request, ConnMode::Publish];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnMode::Handshake => "handshake",
            ConnMode::Request => "request",
            ConnMode::Publish => "publish",
        }
    }
}

/// One connection's counters (SRT bytes: header included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub ctrl_packets_sent: u64,
    pub ctrl_packets_recv: u64,
    /// Full ACKs never answered with an ACKACK (publishers).
    pub ctrl_packets_lost: u64,
    pub ctrl_bytes_sent: u64,
    pub ctrl_bytes_recv: u64,
    pub ctrl_bytes_lost: u64,
    pub data_packets_sent: u64,
    pub data_packets_recv: u64,
    pub data_packets_lost: u64,
    pub data_bytes_sent: u64,
    pub data_bytes_recv: u64,
    pub data_bytes_lost: u64,
    /// Data packets sent again (NAK answers), a subset of `data_packets_sent`.
    pub data_packets_retrans: u64,
    /// Data packets the kernel fast path cloned to this viewer (not in `data_packets_sent`).
    pub data_packets_sent_kernel: u64,
    pub rtt_us: u64,
    pub rtt_var_us: u64,
    /// A viewer's play-out lead (µs) for the newest packet it acknowledged: how long before
    /// its play-out time it had it (see `relay::playout`).
    pub playout_lead_us: i64,
    /// Data packets given up on: a publisher's gaps the relay stopped waiting for (too late
    /// to play, or dropped by the publisher: libsrt's receiver `pktRcvDrop`); a viewer's
    /// packets it was told to drop (DROPREQ: too old for the ring, too late to play, or too
    /// large for it; libsrt's sender `pktSndDrop`).
    pub data_packets_dropped: u64,
    /// Loss reports (NAK packets) received from the peer (viewers) and sent to it
    /// (publishers).
    pub naks_recv: u64,
    pub naks_sent: u64,
    /// SRT bytes sent and received over the last measurement interval (`rates`), bit/s;
    /// sent includes the kernel path's clones (at the stream's mean packet size).
    pub send_rate_bps: u64,
    pub recv_rate_bps: u64,
    /// A viewer's available receive buffer, packets, from its latest full or small ACK,
    /// whether the relay or the kernel path read it (libsrt's `pktFlowWindow`); none
    /// before one.
    pub peer_buffer_available: Option<u32>,
    /// The peer's receive buffer, packets, as its handshake announced it (the flow window:
    /// libsrt sends the smaller of its receive buffer and its flight flag size).
    pub peer_buffer_size: Option<u32>,
}

impl ConnStats {
    pub fn sent_control(&mut self, len: usize) {
        self.ctrl_packets_sent += 1;
        self.ctrl_bytes_sent += len as u64;
    }

    pub fn received_control(&mut self, len: usize) {
        self.ctrl_packets_recv += 1;
        self.ctrl_bytes_recv += len as u64;
    }

    pub fn sent_data(&mut self, len: usize) {
        self.data_packets_sent += 1;
        self.data_bytes_sent += len as u64;
    }
}

/// Which path sends a connection its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnDatapath {
    Userspace,
    /// The eBPF program clones the publisher's packets to this viewer.
    Kernel,
}

impl ConnDatapath {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnDatapath::Userspace => "userspace",
            ConnDatapath::Kernel => "kernel",
        }
    }
}

/// One connection in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSnapshot {
    pub id: u32,
    pub mode: ConnMode,
    /// The stream's resource (hex, as configured).
    pub resource: String,
    /// As logs show it (`relay::shown`: IPv4 for an IPv4-mapped caller).
    pub peer: SocketAddr,
    /// When its handshake was accepted, µs since the Unix epoch.
    pub since_unix_us: u64,
    /// The TSBPD delay agreed in the handshake (the larger of both directions), ms.
    pub latency_ms: u64,
    pub datapath: ConnDatapath,
    pub stats: ConnStats,
}

/// One configured stream in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSnapshot {
    pub resource: String,
    pub publisher: bool,
    /// Viewers past their handshake.
    pub viewers: u64,
    pub bitrate_bps: u64,
    /// The publisher's packet rate (packets/s).
    pub packet_rate: u64,
    /// The delay asked for (config.json or the HTTP API), ms.
    pub delay_target_ms: u64,
    /// The delay applied now (it moves towards the target gradually), µs.
    pub delay_applied_us: u64,
    /// The estimate of the publisher's ingest latency, µs (0: no publisher).
    pub ingest_latency_us: u64,
    /// An edge's pull from its upstream (on the worker that pulls).
    pub pull: Option<super::PullSnapshot>,
}

/// Why the relay ended a connection (the `reason` label of `srt_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent SHUTDOWN (the only case without a SHUTDOWN back).
    PeerShutdown,
    /// Nothing heard from the peer within the idle timeout.
    IdleTimeout,
    /// A viewer that acknowledged nothing new for the idle timeout while data waited.
    Stuck,
    /// A publisher replaced by a newer one for the same stream.
    TakenOver,
    /// The peer broke the protocol (a loss report out of range, refused keys).
    ProtocolViolation,
    /// An edge's pull from its upstream: stopped (no viewers left) or silent.
    PullEnded,
    /// The relay is shutting down.
    RelayShutdown,
    /// The HTTP API asked (`DELETE /v1/connections/{id}`).
    Kicked,
    /// A reload removed the connection's stream.
    StreamRemoved,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerShutdown => "peer_shutdown",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Stuck => "stuck",
            CloseReason::TakenOver => "taken_over",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::PullEnded => "pull_ended",
            CloseReason::RelayShutdown => "relay_shutdown",
            CloseReason::Kicked => "kicked",
            CloseReason::StreamRemoved => "stream_removed",
        }
    }
}

/// Datagrams dropped without effect, by reason, handshakes refused, by code, and
/// connections the relay ended, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drops {
    pub dropped: BTreeMap<&'static str, u64>,
    pub rejections: BTreeMap<u32, u64>,
    pub closed: BTreeMap<&'static str, u64>,
}

impl Drops {
    pub fn close(&mut self, reason: CloseReason) {
        *self.closed.entry(reason.as_str()).or_default() += 1;
    }

    pub fn drop_packet(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    pub fn reject(&mut self, code: u32) {
        *self.rejections.entry(code).or_default() += 1;
    }
}

/// Everything the relay counts, at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Connections accepted since start.
    pub connections_total: u64,
    pub conns: Vec<ConnSnapshot>,
    pub streams: Vec<StreamSnapshot>,
    pub drops: Drops,
}

impl Snapshot {
    pub fn dropped(&self, reason: &str) -> u64 {
        self.drops.dropped.get(reason).copied().unwrap_or(0)
    }

    /// Adds another worker's snapshot to this one (see [`StreamSnapshot::merge`]).
    pub fn merge(&mut self, other: Snapshot) {
        self.connections_total += other.connections_total;
        self.conns.extend(other.conns);
        self.conns.sort_by_key(|c| c.id);
        // By resource, not position: a reload adds and removes streams on one worker after
        // another, and a snapshot may be taken in between.
        for b in other.streams {
            match self.streams.iter_mut().find(|a| a.resource == b.resource) {
                Some(a) => a.merge(&b),
                None => self.streams.push(b),
            }
        }
        for (k, v) in other.drops.dropped {
            *self.drops.dropped.entry(k).or_default() += v;
        }
        for (k, v) in other.drops.rejections {
            *self.drops.rejections.entry(k).or_default() += v;
        }
        for (k, v) in other.drops.closed {
            *self.drops.closed.entry(k).or_default() += v;
        }
    }
}

impl StreamSnapshot {
    /// One stream as two workers see it: viewers add up; the publisher is on one of them,
    /// and its numbers (rates, ingest latency, the delay it moves) are the larger.
    pub fn merge(&mut self, other: &StreamSnapshot) {
        self.publisher |= other.publisher;
        self.viewers += other.viewers;
        self.bitrate_bps = self.bitrate_bps.max(other.bitrate_bps);
        self.packet_rate = self.packet_rate.max(other.packet_rate);
        self.ingest_latency_us = self.ingest_latency_us.max(other.ingest_latency_us);
        if other.publisher {
            self.delay_applied_us = other.delay_applied_us;
        }
        if other.pull.is_some() {
            self.pull.clone_from(&other.pull);
        }
    }
}
