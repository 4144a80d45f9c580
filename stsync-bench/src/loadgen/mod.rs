//! The load generator: one publisher and N viewers over real SRT (HSv5 caller handshakes,
//! ACK/ACKACK/NAK like libsrt), two threads (publisher, viewers), two UDP sockets.
//!
//! The publisher has its own thread because its sends set off the relay's fan-out in the
//! kernel, which runs (as softirq) inside the sending thread: at hundreds of viewers one
//! publisher packet costs milliseconds there, and the viewers' ACKs must not wait for it
//! (nor the publisher's pacing for them).
//!
//! Cheapness: all viewers share one UDP socket. Each viewer has its own source address
//! (`--viewer-ip` + i, picked per datagram with IP_PKTINFO; on loopback any 127/8 address
//! works, in a namespace an AnyIP `local` route), so the relay sees N distinct peers while
//! the generator receives with one `recvmmsg` per batch of up to 256 datagrams from all
//! viewers and sends every ACK, ACKACK answer and NAK of an iteration with one `sendmmsg`.
//! Incoming datagrams are routed to their viewer by the SRT destination socket ID.
//!
//! With `--rx xdp` the viewers' data packets never reach that socket: the kernel sink
//! (stsync-bench-ebpf, see `sink`) records each one in its viewer's slot ring and drops it,
//! and every pass of the loop feeds what arrived since the last pass, in sequence order,
//! to the same receivers (so ACKs, light ACKs and NAKs are what they would be), and to the
//! same delivery and latency bookkeeping. Control packets still come through the socket.
//!
//! Files: `opts` (the options, and the stream sent), `setup` (options checked, keys,
//! sockets, sink), `conn` (the caller handshake), `crypto` (an encrypting caller's keys), `publisher` (its thread), `viewers` (their
//! loop's work), `sink_feed` (--rx xdp), `window` (the phases, and what is measured at the
//! window's edges), `report` (the figures).

mod conn;
mod crypto;
mod opts;
mod publisher;
mod report;
mod setup;
mod sink_feed;
pub(crate) mod viewers;
mod window;

pub(crate) use conn::{rand_u32, Conn, Hs, KEEPALIVE};
pub use crypto::Secret;
pub use opts::{parse_rate, Media, Opts, RxMode};
pub(crate) use publisher::{new_publisher, spawn_publisher, PubShared, PublisherOutcome};
pub(crate) use viewers::{ViewerCountersView, ViewerIo, BUFFER_PKTS};

use crate::report::{GeneratorReport, Report};
use crate::sink::Sink;
use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use stsync_user::os::proc;
use viewers::Viewers;
use window::{self_cpu_ticks, Phases};

/// One run: the publisher streams, the viewers connect, and after the warm-up the window
/// is measured; then everything closes and the figures are put together.
pub fn run(o: &Opts) -> Result<Report> {
    let log = |s: String| {
        if !o.quiet {
            eprintln!("loadgen: {s}");
        }
    };
    let s = setup::Setup::new(o, &log)?;
    let ns_of = s.ns_of();
    let (t0, shared, sink) = (s.t0, s.shared, s.sink);
    let n = s.viewers.len();
    let mut vs = Viewers::new(
        s.viewers,
        s.view_fd.as_raw_fd(),
        s.id_base,
        o.media.latency_ms,
        t0,
    );
    let hard_deadline = t0
        + Duration::from_secs_f64(60.0 + o.warmup + o.duration)
        + Duration::from_millis(o.drain_ms);
    let publisher = {
        let deadline = hard_deadline + Duration::from_secs(1);
        spawn_publisher(
            s.publisher,
            o.media.latency_ms,
            o.media.payload,
            ns_of,
            deadline,
        )
        .context("starting the publisher thread")?
    };
    log(format!(
        "publishing to {} at {} bit/s ({:.0} packets/s of {} bytes), {n} viewers to {}{}",
        o.pub_relay.unwrap_or(o.relay),
        o.media.bitrate,
        o.media.pkts_per_sec(),
        o.media.payload,
        o.relay,
        o.second_relay.map_or(String::new(), |b| format!(
            " (from viewer {} on: {b})",
            o.split()
        ))
    ));

    let mut phases = Phases::new(t0, n);
    loop {
        let now = Instant::now();
        if now >= hard_deadline {
            bail!("run exceeded its time bound ({:?})", hard_deadline - t0);
        }
        if publisher.is_finished() {
            shared.stop.store(true, Ordering::Release);
            return match publisher.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => bail!("the publisher stopped early"),
                Err(_) => bail!("the publisher thread panicked"),
            };
        }
        if phases.advance(o, now, &shared, &mut vs, &log) {
            break;
        }
        vs.receive(&ns_of);
        if let Some(sink) = &sink {
            vs.take_from_sink(sink);
        }
        let now = Instant::now();
        vs.timers(now);
        vs.sleep(now, o.tick_us, phases.starting());
    }

    // Done: close everything politely.
    shared.stop.store(true, Ordering::Release);
    vs.close(Instant::now());
    let (pub_stats, pub_tx, pub_recv_syscalls) = match publisher.join() {
        Ok(r) => r?,
        Err(_) => bail!("the publisher thread panicked"),
    };
    let cpu_total_secs = (self_cpu_ticks() - s.cpu_start) as f64 / proc::clk_tck() as f64;
    let acks_in_window = phases.acks_in_window;
    let (cpu, relay_syscalls, relay_syscalls_error, more_relays) =
        phases.finish(o.watch_pid, &log)?;
    if let Some(sink) = &sink {
        vs.add_sink_counts(sink);
    }
    let sink_report = sink.as_ref().map(Sink::report);
    drop(sink);
    let generator = GeneratorReport {
        cpu_total_s: cpu_total_secs,
        run_s: t0.elapsed().as_secs_f64(),
        send_syscalls: vs.io.tx.syscalls + pub_tx.syscalls,
        recv_syscalls: vs.recv.syscalls + pub_recv_syscalls,
        datagrams_sent: vs.io.tx.sent + pub_tx.sent,
        send_failed: vs.io.tx.failed + pub_tx.failed,
        stray: vs.stray,
    };
    Ok(report::build(
        o,
        &vs.list,
        &vs.win,
        report::Measured {
            cpu,
            publisher: pub_stats,
            generator,
            acks_in_window,
            relay_syscalls,
            relay_syscalls_error,
            sink: sink_report,
            more_relays,
        },
    ))
}
