//! What crosses between the relay and the rest besides datagrams: route events out to the
//! datapath, reports in from the kernel fast path, and commands in from the HTTP API.

use super::keys::{Minted, TooMany};
use super::stats::StreamSnapshot;
use crate::srt::seq::Seq;
use crate::srt::streamid::Mode;
use std::net::SocketAddr;
use std::time::Instant;

/// What the datapath must learn about viewers and publishers (the kernel fast path keeps
/// its maps in step), from [`Relay::poll_event`](super::Relay::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    ViewerAdded {
        conn: u32,
        resource: String,
        peer: SocketAddr,
        peer_id: u32,
        /// The connection's clock starts here (the time base of its timestamps).
        start: Instant,
        /// The kernel's clones cannot serve it: it encrypts with a key of its own, or its
        /// MSS is below libsrt's default, so it takes less than the largest payload a
        /// publisher may send and the relay must check each packet's size for it
        /// (`ViewerSend::max_payload`). Served from userspace.
        userspace_only: bool,
    },
    /// The viewer's offsets for the stream's current publisher.
    ViewerMapped {
        conn: u32,
        offsets: Offsets,
    },
    ViewerRemoved {
        conn: u32,
    },
    PublisherChanged {
        resource: String,
        publisher: Option<(SocketAddr, u32)>,
        epoch: u64,
        /// Its packets are encrypted: only the relay, which decrypts them, can fan them out.
        encrypted: bool,
    },
    /// The stream's viewers get timestamps `delay_us` later from now on.
    StreamDelay {
        resource: String,
        delay_us: u32,
    },
    /// A reload removed the stream; this worker closed its connections first (their own
    /// events came before), so the datapath may free what it kept for it.
    StreamRemoved {
        resource: String,
    },
}

/// How a viewer's packets are numbered and timed, for one publisher epoch: viewer seq =
/// (publisher seq + `seq_off`) & 0x7FFF_FFFF, viewer timestamp = publisher timestamp +
/// `ts_off` (wrapping; the stream's delay comes on top).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub epoch: u64,
    pub seq_off: u32,
    pub ts_off: u32,
}

/// What the kernel fast path did, for [`Relay::handle_kernel`](super::Relay::handle_kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelReport {
    /// The kernel fans publisher epoch `epoch` out to viewer `conn` from now on (the relay
    /// then sends it only retransmissions while that epoch lasts); `None`: it no longer
    /// does, the relay sends it everything again. `since`: with several workers, the
    /// publisher's worker took it onto the kernel path right after it read its socket dry
    /// at `since`, so the kernel cloned exactly the packets read after that.
    Serving {
        conn: u32,
        epoch: Option<u64>,
        since: Option<Instant>,
    },
    /// Viewer `conn`'s ACKs that the kernel answered instead of the relay.
    Acks { conn: u32, acks: KernelAcks },
    /// Data packets the kernel cloned to viewer `conn` so far.
    Clones { conn: u32, total: u64 },
}

impl KernelReport {
    /// The connection it concerns (its socket ID names the worker that owns it).
    pub fn conn(&self) -> u32 {
        match *self {
            KernelReport::Serving { conn, .. }
            | KernelReport::Acks { conn, .. }
            | KernelReport::Clones { conn, .. } => conn,
        }
    }
}

/// A viewer's ACKs that the kernel fast path handled (recorded, and answered with ACKACKs)
/// instead of the relay, as the datapath read them from the program's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelAcks {
    /// When the latest of them arrived.
    pub last: Instant,
    /// The latest acknowledged sequence number.
    pub ack_seq: Seq,
    /// The viewer's RTT and RTT variance (µs) from its latest full or small ACK.
    pub rtt: Option<(u32, u32)>,
    /// The viewer's free receive buffer (packets) from the same ACK.
    pub avail_buf: Option<u32>,
    /// Since the previous report: ACKs answered with an ACKACK, light ACKs, and the SRT
    /// bytes of both.
    pub answered: u64,
    pub light: u64,
    pub bytes: u64,
}

/// What the HTTP API asks of the relay, for
/// [`Relay::handle_command`](super::Relay::handle_command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Registers a single-use session key for a stream: `key` is 64 random bits from the
    /// caller (the key itself, or a signed key's nonce when the relay has a `key_secret`).
    /// With a passphrase, the connection that uses it must encrypt with one of its own:
    /// that one for a random key; a signed key's is derived from the secret and the key
    /// (see `SessionKeys::mint`), and the reply says which.
    MintSession {
        resource: String,
        key: u64,
        passphrase: Option<String>,
        /// The only mode the key admits (none: either).
        mode: Option<Mode>,
    },
    /// Moves a stream's viewers to a new delay (gradually, see README).
    SetDelay { resource: String, delay_ms: u64 },
    /// Closes connection `conn` as an idle timeout does: SHUTDOWN to the peer, then its
    /// routes (and kernel-path entries) go. Its session key stays spent.
    Close { conn: u32 },
    /// A reload added the stream: usable at once (in a retired slot, or a new one).
    AddStream(super::StreamConfig),
    /// A reload removed the stream: its connections get SHUTDOWN, its keys are forgotten.
    RemoveStream { resource: String },
    /// A reload changed the stream's passphrases or key length: new connections only (the
    /// delay goes through `SetDelay`).
    UpdateStream(super::StreamConfig),
    /// A reload changed the relay's limits: new connections only.
    SetLimits(super::RelayLimits),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The new key, as hex for the stream ID, and its passphrase if it has one.
    Session(Minted),
    /// The stream after the change.
    Stream(StreamSnapshot),
    Closed,
    /// Done (a reload's change).
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown stream")]
    UnknownStream,
    #[error("unknown connection")]
    UnknownConnection,
    #[error(transparent)]
    TooManyKeys(#[from] TooMany),
    #[error("a passphrase is 10 to 79 characters")]
    Passphrase,
    /// The delay does not fit (the message says why, for an operator).
    #[error("{0}")]
    Delay(String),
    /// A reload would hold more streams than `MAX_STREAMS`.
    #[error("no room for more than {} streams", super::MAX_STREAMS)]
    TooManyStreams,
    /// A reload added a stream that is there already.
    #[error("the stream exists")]
    StreamExists,
}
