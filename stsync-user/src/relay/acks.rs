//! Viewers' ACKs, whoever answered them: the relay (an ACK it reads, answered with an
//! ACKACK) or the kernel fast path (reported later from its maps). Either way they keep the
//! viewer alive, move its send window, measure its play-out, and may show a lost packet.

use super::viewer::Unmapped;
use super::{playout, KernelAcks, Relay, Role, ACKACK_LEN};
use crate::srt::packet::{Ack, ControlPacket};
use crate::srt::seq::Seq;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;
use tracing::warn;

impl Relay {
    pub(super) fn on_viewer_ack(&mut self, now: Instant, id: u32, c: ControlPacket) {
        let ack = match Ack::parse(c.body) {
            Ok(ack) => ack,
            Err(e) => return self.drops.drop_packet(e.reason()),
        };
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let Role::Viewer(v) = &mut conn.role else {
            return;
        };
        let advanced = v.on_ack(ack.ack_seq, now);
        if let Some(f) = ack.full {
            conn.stats.rtt_us = f.rtt_us.into();
            conn.stats.rtt_var_us = f.rtt_var_us.into();
            conn.stats.peer_buffer_available = Some(f.avail_buf);
            self.send_control(now, id, ctrl::ACKACK, c.info, &[0]);
        }
        self.after_ack(now, id, ack.ack_seq, advanced);
    }

    /// Takes in what the kernel fast path did with viewer `conn`'s ACKs: liveness, the
    /// acknowledged position, RTT and the control packet counters, as if the relay had
    /// handled those ACKs itself.
    pub(super) fn on_kernel_acks(&mut self, conn: u32, k: &KernelAcks) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Role::Viewer(v) = &mut c.role else {
            return;
        };
        c.last_recv = c.last_recv.max(k.last);
        let advanced = v.on_ack(k.ack_seq, k.last);
        if let Some((rtt, var)) = k.rtt {
            c.stats.rtt_us = rtt.into();
            c.stats.rtt_var_us = var.into();
        }
        if k.avail_buf.is_some() {
            c.stats.peer_buffer_available = k.avail_buf;
        }
        if k.answered > 0 {
            c.last_sent = c.last_sent.max(k.last);
        }
        c.stats.ctrl_packets_recv += k.answered + k.light;
        c.stats.ctrl_bytes_recv += k.bytes;
        c.stats.ctrl_packets_sent += k.answered;
        c.stats.ctrl_bytes_sent += k.answered * ACKACK_LEN;
        // Judged at the ACK's own arrival: the packet's ring time is when the relay read it,
        // after the kernel had sent it, so this errs late.
        self.after_ack(k.last, conn, k.ack_seq, advanced);
    }

    /// What an ACK up to `ack` (arrived `at`; `advanced`: it acknowledged something new)
    /// tells about viewer `id`: its play-out, a packet lost at the ACK point, when to check
    /// its resent packets.
    fn after_ack(&mut self, at: Instant, id: u32, ack: Seq, advanced: bool) {
        if advanced {
            self.check_playout(at, id, ack);
        }
        self.on_ack_gap(at, id, ack);
        self.arm_recheck(id);
    }

    /// Where the packet viewer `id` newly acknowledged (up to `ack`, exclusive, at `at`)
    /// fell against its play-out, read as libsrt reads it: kept as the viewer's play-out
    /// lead, and warned about (at most every 10 s) when far off. A viewer whose time base
    /// disagrees with its timestamps acknowledges everything and plays nothing, and says
    /// nothing about it; this is where it shows.
    fn check_playout(&mut self, at: Instant, id: u32, ack: Seq) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Role::Viewer(v) = &conn.role else {
            return;
        };
        let s = &self.streams[conn.stream];
        let Unmapped::Publisher(p) = v.unmap(s.epoch, ack.sub(1)) else {
            return;
        };
        let Some((_, pkt)) = s.ring.as_ref().and_then(|r| r.get(p)) else {
            return;
        };
        let ts = v.ts(pkt.ts).wrapping_add(pkt.delay);
        let lead = playout::lead_us(conn.clock64(at), ts, conn.latency, conn.stats.rtt_us);
        conn.stats.playout_lead_us = lead;
        let quiet = conn
            .playout_warned
            .is_some_and(|t| at.saturating_duration_since(t) < Duration::from_secs(10));
        if playout::far_off(lead, conn.latency, pkt.delay) && !quiet {
            conn.playout_warned = Some(at);
            warn!(
                conn = id,
                peer = %super::shown(conn.peer),
                lead_ms = lead / 1000,
                latency_ms = conn.latency.as_millis() as u64,
                delay_ms = pkt.delay / 1000,
                "viewer acknowledged a packet it plays {:.3} s from now (latency {} ms): its time base and the timestamps it is sent disagree",
                lead as f64 / 1e6,
                conn.latency.as_millis()
            );
        }
    }
}
