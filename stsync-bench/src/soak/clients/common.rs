//! What every SRT client of the soak has in common: where and how it connects, and what a
//! connected client does with what it receives and when its timers fire.

use crate::caller;
use crate::loadgen::{rand_u32, Conn, Hs, ViewerCountersView, ViewerIo, KEEPALIVE};
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use stsync_user::srt::receiver::{Arrival, Receiver};
use stsync_user::srt::seq::Seq;

/// What every SRT client thread needs to know.
#[derive(Clone)]
pub struct Common {
    pub relay: SocketAddrV4,
    pub stream: String,
    pub sid_template: String,
    pub latency_ms: u16,
    pub seed: u64,
    /// Nothing may run past this.
    pub hard_deadline: Instant,
}

impl Common {
    pub fn sid(&self, key: &str, mode: &str) -> String {
        caller::stream_id(&self.sid_template, &self.stream, key, mode)
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(u64::from(self.latency_ms))
    }
}

pub fn new_socket_id(taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = (rand_u32() & 0x3FFF_FFFF) | 1;
        if !taken(id) {
            return id;
        }
    }
}

/// Feeds one received data packet to a connected client's receiver (which may ACK or NAK
/// at once) and says whether it was new.
pub fn receive_data(
    conn: &mut Conn,
    rx: &mut Receiver,
    st: &mut ViewerCountersView,
    now: Instant,
    seq: Seq,
    len: usize,
    out: &mut ViewerIo,
) -> Arrival {
    st.received += 1;
    let a = rx.on_data(now, seq, len, &mut out.fb);
    out.send_feedback(conn, now, st);
    a
}

/// Control packets a connected client answers: ACKACK, DROPREQ, SHUTDOWN.
pub fn receive_control(
    conn: &mut Conn,
    rx: Option<&mut Receiver>,
    now: Instant,
    typ: u16,
    info: u32,
    body: &[u8],
) {
    match typ {
        ctrl::ACKACK => {
            if let Some(rx) = rx {
                rx.on_ackack(now, info);
            }
        }
        ctrl::DROPREQ => {
            if let (Some(rx), Some(a), Some(b)) = (rx, body.get(0..4), body.get(4..8)) {
                let w = |x: &[u8]| Seq::new(u32::from_be_bytes(x.try_into().expect("4 bytes")));
                rx.on_dropreq(w(a), w(b));
            }
        }
        ctrl::SHUTDOWN => conn.state = Hs::Closed,
        _ => {}
    }
}

/// Timers of a connected client: its receiver's ACKs and NAKs, keepalives. Returns nothing;
/// sends what is due.
pub fn client_timers(
    conn: &mut Conn,
    rx: &mut Receiver,
    st: &mut ViewerCountersView,
    now: Instant,
    out: &mut ViewerIo,
) {
    if now >= rx.poll_timeout() {
        rx.handle_timeout(now, &mut out.fb);
        out.send_feedback(conn, now, st);
    }
    if now >= conn.last_sent + KEEPALIVE {
        st.keepalives += 1;
        conn.control(now, out.fd, &mut out.tx, ctrl::KEEPALIVE, 0, &[0]);
    }
}
