//! Handshakes: the listener's answer (`srt::listener`), then the relay's own checks (per
//! address budget, resource, limits, session key) before a connection opens.

use super::encryption::Encryption;
use super::keys::Denied;
use super::retransmit::{rexmit_burst, REXMIT_FLOOR_BPS};
use super::viewer::ViewerSend;
use super::{Conn, ConnMode, ConnStats, Relay, Role, RouteEvent, CLOCK_HEADROOM};
use crate::os::reuseport::id_for_worker;
use crate::srt::crypto::{Kek, KeyMaterial, KmError};
use crate::srt::handshake::max_payload;
use crate::srt::listener::{self, Conclusion, HandshakeOutcome, Rejection};
use crate::srt::packet::ControlPacket;
use crate::srt::receiver::Receiver;
use crate::srt::streamid::Mode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stsync_common::srt::{HEADER_LEN, MAX_PAYLOAD};
use tracing::{debug, info};

impl Relay {
    pub(super) fn on_handshake(&mut self, now: Instant, from: SocketAddr, c: ControlPacket) {
        let existing = |peer_id| self.by_peer.get(&(from, peer_id)).copied();
        let outcome = listener::process(&self.cookies, now, from, c.body, existing);
        let (req, result) = match outcome {
            HandshakeOutcome::Reply(bytes) => return self.out.push_bytes(from, &bytes),
            HandshakeOutcome::Repeat(id) => {
                if !self.answer_again(now, id, HEADER_LEN + c.body.len()) {
                    self.drops.drop_packet("short_handshake");
                }
                return;
            }
            HandshakeOutcome::Ignore(reason) => return self.drops.drop_packet(reason),
            HandshakeOutcome::Reject(req, rej) => (req, Err(rej)),
            HandshakeOutcome::Conclusion(hs) => (hs.hs.clone(), Ok(hs)),
        };
        // Both are conclusions with a valid cookie: the address is the caller's own, so its
        // per-address budget applies before any further work.
        let allowed = self.shared.addresses().handshake(from.ip(), now);
        let result = if allowed {
            result.and_then(|hs| self.admit(now, from, &hs))
        } else {
            Err(Rejection::Backlog)
        };
        if let Err(rej) = result {
            self.drops.reject(rej.code());
            let log = self.shared.addresses().should_log(from.ip(), now);
            if log {
                info!(peer = %super::shown(from), code = rej.code(), reason = %rej, "reject code={} (this address's next rejections for 10 s at debug)", rej.code());
            } else {
                debug!(peer = %super::shown(from), code = rej.code(), reason = %rej, "reject code={}", rej.code());
            }
            self.out
                .push_bytes(from, &listener::rejection(&req, rej.code()));
        }
    }

    /// Sends connection `id`'s conclusion answer again for a repeated conclusion of `len`
    /// bytes; never more bytes than asked with (libsrt's conclusion, with its HSREQ and
    /// stream ID, is longer than our answer), so it cannot be used to amplify.
    pub(super) fn answer_again(&mut self, now: Instant, id: u32, len: usize) -> bool {
        match self.conns.get(&id) {
            Some(conn) if conn.response.len() > len => false,
            // A connection this relay called (`pull`) has no answer to repeat.
            Some(conn) if conn.response.is_empty() => true,
            Some(_) => {
                self.send_answer(now, id);
                self.replay_unconfirmed(now, id);
                true
            }
            None => true,
        }
    }

    /// A viewer that repeats its conclusion did not get our answer, so it dropped whatever
    /// data came before it (libsrt re-requests on the first one: "PACKET NOT HANDSHAKE"),
    /// and would ask for it only after its first loss report round, too late at 120 ms
    /// (captured). Everything it was sent so far follows the answer, within its budget.
    /// Only until the viewer is heard from: then it reports its own losses.
    fn replay_unconfirmed(&mut self, now: Instant, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.mode != ConnMode::Handshake {
            return;
        }
        let Role::Viewer(v) = &mut conn.role else {
            return;
        };
        if v.mapping().is_none() || !v.last_ack.lt(v.next_vseq()) {
            return;
        }
        let (first, last) = (v.last_ack, v.next_vseq().sub(1));
        v.loss.insert(first, last, now);
        self.retransmit(now, id, &[]);
    }

    /// Sends connection `id` its conclusion answer, stamped with its clock now: the caller
    /// takes its time base from the answer it gets, whichever one that is.
    fn send_answer(&mut self, now: Instant, id: u32) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ts = conn.clock(now);
        listener::stamp(&mut conn.response, ts);
        self.out.push_bytes(conn.peer, &conn.response);
    }

    /// Checks a proven conclusion against the resource, limits and session key, then opens
    /// the connection and answers.
    fn admit(&mut self, now: Instant, from: SocketAddr, hs: &Conclusion) -> Result<(), Rejection> {
        use Rejection as R;
        let sid = &hs.stream_id;
        let &stream = self.by_resource.get(&sid.resource).ok_or(R::NotFound)?;
        // A pulled stream's publisher is its upstream (see `pull`).
        if sid.mode == Mode::Publish && self.streams[stream].pulled {
            return Err(R::Forbidden);
        }
        // Publishers have a budget of their own (one per stream; a takeover closes the old
        // one), so viewers filling the relay never keep a stream's publisher out.
        let viewer = sid.mode == Mode::Request;
        let (max_total, max_here) = (self.cfg.max_connections, self.cfg.max_viewers_per_stream);
        if viewer && !self.shared.room_for_viewer(stream, max_total, max_here) {
            return Err(R::Overload);
        }
        if !self.shared.addresses().may_connect(from.ip()) {
            return Err(R::AddressOverload);
        }
        let denied = |d| match d {
            Denied::Unknown => R::Unauthorized,
            Denied::Used => R::Forbidden,
            Denied::Expired => R::Expired,
            Denied::Full => R::KeysOverload,
        };
        // A valid key first (a signed one's MAC before anything else about it): only then
        // the passphrase, whose key derivation (a PBKDF2, up to 0.4 ms) a caller without
        // one cannot make the relay do.
        let unix = self.cfg.wall_clock.unix(now);
        let own = self
            .shared
            .keys()
            .check(&sid.resource, &sid.session, sid.mode, now, unix)
            .map_err(denied)?;
        // Before the session key is spent: a caller with the wrong passphrase may try again.
        // A key minted with a passphrase of its own asks for that one.
        let s = &self.streams[stream];
        let passphrase = own.as_deref().or(match sid.mode {
            Mode::Publish => s.publish_passphrase.as_deref(),
            Mode::Request => s.view_passphrase.as_deref(),
        });
        let encryption = caller_encryption(passphrase, hs.km.as_deref(), sid.mode, now)?;
        // A stream that asks for a key length takes no other (libsrt would let the
        // caller's stand).
        if let (Some(want), Some(e)) = (s.pbkeylen, &encryption) {
            if e.keys.key_len() != usize::from(want) {
                return Err(R::Unsecure);
            }
        }
        let encrypted = encryption.is_some();
        // Counted now, against the limits on every worker (the check above was a hint).
        if viewer && !self.shared.add_viewer(stream, max_total, max_here) {
            return Err(R::Overload);
        }
        let redeemed = self
            .shared
            .keys()
            .redeem(&sid.resource, &sid.session, sid.mode, now, unix);
        if let Err(d) = redeemed {
            // Spent on another worker since the check.
            if viewer {
                self.shared.remove_viewer(stream);
            }
            return Err(denied(d));
        }

        let id = self.new_socket_id();
        let (rcv_latency, snd_latency) = hs.latencies(self.cfg.latency);
        let kmrsp = hs.km.as_deref().filter(|_| encrypted);
        let response = listener::accept(&hs.hs, id, from, (rcv_latency, snd_latency), kmrsp);
        let role = match sid.mode {
            Mode::Publish => Role::Publisher(Box::new(Receiver::new(
                hs.hs.isn,
                Duration::from_millis(rcv_latency.into()),
                self.cfg.buffer_packets,
                now,
            ))),
            Mode::Request => Role::Viewer(ViewerSend::new(
                hs.hs.isn,
                rexmit_burst(REXMIT_FLOOR_BPS),
                max_payload(hs.hs.mtu),
                now,
            )),
        };
        info!(
            conn = id,
            peer = %super::shown(from),
            resource = %sid.resource,
            mode = sid.mode.as_str(),
            latency_ms = rcv_latency.max(snd_latency),
            aes_bits = encryption.as_ref().map_or(0, |e| e.keys.key_len() * 8),
            worker = self.worker,
            "connection accepted"
        );
        let conn = Conn {
            peer: from,
            peer_id: hs.hs.socket_id,
            stream,
            mode: ConnMode::Handshake,
            start: now.checked_sub(CLOCK_HEADROOM).unwrap_or(now),
            latency: Duration::from_millis(rcv_latency.max(snd_latency).into()),
            since: now,
            rates: super::rates::Rates::new(now),
            kernel_bytes: 0,
            playout_warned: None,
            last_recv: now,
            last_sent: now,
            response,
            role,
            kernel_epoch: None,
            serving_from: None,
            encryption: encryption.map(Box::new),
            stats: ConnStats {
                peer_buffer_size: Some(hs.hs.flow_window),
                ..ConnStats::default()
            },
        };
        let start = conn.start;
        self.conns.insert(id, conn);
        self.connections_total += 1;
        self.send_answer(now, id);
        self.by_peer.insert((from, hs.hs.socket_id), id);
        self.shared.addresses().opened(from.ip());
        let s = &mut self.streams[stream];
        match sid.mode {
            Mode::Publish => self.take_publisher(now, stream, id, from, encrypted),
            Mode::Request => {
                s.viewers.push(id);
                // Served from userspace until the kernel takes it: woken for its packets.
                self.shared.set_prompt_feed(self.worker, true);
                // A viewer whose MSS is below libsrt's default takes less than the largest
                // payload a publisher may send (`max_payload`): the kernel's clones do not
                // check sizes, so it is served from userspace, which does.
                let small = max_payload(hs.hs.mtu) < MAX_PAYLOAD;
                self.events.push_back(RouteEvent::ViewerAdded {
                    conn: id,
                    resource: s.resource.clone(),
                    peer: from,
                    peer_id: hs.hs.socket_id,
                    start,
                    userspace_only: encrypted || small,
                });
                // The first viewer of a stream pulled here starts its pull now.
                self.drive_pull(now, stream);
            }
        }
        Ok(())
    }

    /// 64 random bits: splitmix64 over the seed the driver gave (well spread, and
    /// unpredictable enough with a random seed); socket IDs and callers' ISNs.
    pub(super) fn next_random(&mut self) -> u64 {
        self.id_state = self.id_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.id_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn new_socket_id(&mut self) -> u32 {
        loop {
            let id = id_for_worker(self.next_random() as u32, self.worker, self.shared.workers);
            if id != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }
}

/// The caller's stream keys when its connection must encrypt with `passphrase` (its keying
/// material `km`, opened with it), as libsrt's listener decides: keys offered where none is
/// set, or none offered where one is, is REJ_UNSECURE; keys that do not open are
/// REJ_BADSECRET.
pub(super) fn caller_encryption(
    passphrase: Option<&str>,
    km: Option<&[u8]>,
    mode: Mode,
    now: Instant,
) -> Result<Option<Encryption>, Rejection> {
    let (passphrase, km) = match (passphrase, km) {
        (None, None) => return Ok(None),
        (Some(p), Some(km)) => (p, km),
        _ => return Err(Rejection::Unsecure),
    };
    let open = || {
        let km = KeyMaterial::parse(km)?;
        let kek = Kek::derive(passphrase.as_bytes(), &km.salt, km.key_len)?;
        let raw = km.unwrap(&kek)?;
        let viewer = mode == Mode::Request;
        Encryption::new(&km, raw, kek, passphrase.to_string(), viewer, now)
    };
    open().map(Some).map_err(|e| match e {
        KmError::BadSecret => Rejection::BadSecret,
        KmError::Malformed(_) | KmError::Cipher => Rejection::Unsecure,
    })
}
