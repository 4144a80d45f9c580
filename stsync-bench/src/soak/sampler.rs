//! The sampler: every --sample-secs, one row of what changed since the last one: the
//! relay's process (/proc: RSS, CPU, fds, threads), the machine and this tool, the clients'
//! counters, a scrape of the relay's metrics, and what the honest viewers got of the stretch
//! of the stream published one interval earlier.

use super::clients::honest::EvalRequest;
use super::clients::shared::{Snapshot, C};
use super::load::Load;
use super::metrics::{scrape, ConnDeltas, RelayMetrics};
use super::sample::Sample;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use stsync_user::os::proc::{self, CpuTimes, Stat, Status};

/// Publisher payload index, and when it was reached (seconds since the start).
type Mark = (u64, f64);

/// State carried from one sample to the next.
pub struct Sampler {
    pid: u32,
    http: SocketAddr,
    t0: Instant,
    last_t: Instant,
    last_cpu: Option<(u64, u64)>,
    last_sys: CpuTimes,
    last_self: u64,
    last_counters: Snapshot,
    last_dropped: Option<f64>,
    last_heap: Option<f64>,
    deltas: ConnDeltas,
    honest_deltas: ConnDeltas,
    /// Publisher payload index at each sample, and when (seconds since the start); the
    /// first at the start of the judged run.
    pub marks: Vec<Mark>,
    last_lost: u64,
    last_given_up: u64,
}

fn self_cpu_ticks() -> u64 {
    Stat::read("self").map_or(0, |s| s.cpu_ticks())
}

impl Sampler {
    /// The sampler of relay `pid`, from now on, with a first baseline of the relay's
    /// counters (no row).
    pub fn start(pid: u32, http: SocketAddr, t0: Instant, load: &Load) -> Sampler {
        let sh = &load.sh;
        let mut sampler = Sampler {
            pid,
            http,
            t0,
            last_t: Instant::now(),
            last_cpu: Stat::read(pid).map(|s| s.user_sys()),
            last_sys: CpuTimes::read(),
            last_self: self_cpu_ticks(),
            last_counters: sh.snapshot(),
            last_dropped: None,
            last_heap: None,
            deltas: ConnDeltas::default(),
            honest_deltas: ConnDeltas::default(),
            marks: vec![(load.publ.next_index(), t0.elapsed().as_secs_f64())],
            last_lost: 0,
            last_given_up: 0,
        };
        // First baseline of the relay's counters at t0 (no row).
        if let (Some(m), _) = scrape(http) {
            sampler.last_dropped = Some(m.dropped_total);
            sampler.last_heap = m.heap_allocations;
            let honest_ids = sh.honest_ids.lock().expect("ids").clone();
            sampler.honest_deltas.step(&m, &honest_ids);
            let attacker_ids = sh.attacker_ids.lock().expect("ids").clone();
            sampler.deltas.step(&m, &attacker_ids);
        }
        sampler
    }

    /// One row: the interval since the last one, and the delivery of the payload indices
    /// `judge` spans (none yet in the first interval).
    pub fn take(&mut self, load: &Load, judge: Option<(Mark, Mark)>) -> Sample {
        let pub_next = load.publ.next_index();
        let (t0, sh) = (self.t0, &load.sh);
        let now = Instant::now();
        let dt = now.duration_since(self.last_t).as_secs_f64().max(1e-6);
        let tck = proc::clk_tck() as f64;
        let pct = |ticks: u64| ticks as f64 / tck / dt * 100.0;
        let pid = self.pid;
        let status = Status::read(pid).unwrap_or_default();
        let cpu = Stat::read(pid).map(|s| s.user_sys());
        let (cpu_pct, cpu_user_pct, cpu_sys_pct) = match (self.last_cpu, cpu) {
            (Some(a), Some(b)) => (
                Some(pct((b.0 + b.1).saturating_sub(a.0 + a.1))),
                Some(pct(b.0.saturating_sub(a.0))),
                Some(pct(b.1.saturating_sub(a.1))),
            ),
            _ => (None, None, None),
        };
        self.last_cpu = cpu;
        let machine = CpuTimes::read();
        let me = self_cpu_ticks();
        let (m, metrics_ms) = scrape(self.http);
        let counters = sh.snapshot();
        let d = |c: C| counters[c as usize].saturating_sub(self.last_counters[c as usize]);
        let attacker_ids = sh.attacker_ids.lock().expect("ids").clone();
        let honest_ids = sh.honest_ids.lock().expect("ids").clone();
        let (storms, flood) = (&load.storms, &load.flood);
        let mut s = Sample {
            t_s: now.duration_since(t0).as_secs_f64(),
            interval_s: dt,
            rss_kb: status.field("VmRSS"),
            cpu_pct,
            cpu_user_pct,
            cpu_sys_pct,
            fds: proc::fd_count(pid),
            threads: status.field("Threads"),
            metrics_ok: m.is_some(),
            metrics_ms,
            attacker_rx_bytes_per_s: d(C::AttackerRxBytes) as f64 / dt,
            honest_connected: sh.honest_connected.load(Relaxed),
            storm: storms.overlap(
                self.last_t.duration_since(t0).as_secs_f64(),
                now.duration_since(t0).as_secs_f64(),
            ) / dt,
            flood: flood.overlap(
                self.last_t.duration_since(t0).as_secs_f64(),
                now.duration_since(t0).as_secs_f64(),
            ) / dt,
            naks_sent: d(C::NaksSent),
            churn_joined: d(C::ChurnJoined),
            churn_left: d(C::ChurnLeft),
            churn_died: d(C::ChurnDied),
            churn_failed: d(C::ChurnFailed),
            churn_closed_by_relay: d(C::ChurnClosedByRelay),
            churn_alive: sh.churn_alive.load(Relaxed),
            to_dead_bytes_per_s: d(C::ToDeadBytes) as f64 / dt,
            flood_attempts: d(C::FloodAttempts),
            flood_rejected: d(C::FloodRejected),
            flood_unanswered: d(C::FloodUnanswered),
            garbage_sent: d(C::GarbageSent),
            spoof_sent: d(C::SpoofSent),
            publisher_sent: pub_next.saturating_sub(self.marks.last().map_or(0, |m| m.0)),
            system_busy_pct: pct(machine.busy().saturating_sub(self.last_sys.busy())),
            softirq_pct: pct((machine.softirq + machine.irq)
                .saturating_sub(self.last_sys.softirq + self.last_sys.irq)),
            soak_cpu_pct: pct(me.saturating_sub(self.last_self)),
            ..Default::default()
        };
        let honest_n = sh.honest_connected.load(Relaxed).max(1);
        s.honest_rx_bytes_per_s = d(C::HonestRxBytes) as f64 / dt / f64::from(honest_n);
        s.honest_rx_pkts_per_s = d(C::HonestRxPackets) as f64 / dt / f64::from(honest_n);
        if let Some(m) = &m {
            self.relay_figures(&mut s, m, dt, &honest_ids, &attacker_ids);
        }
        self.judge(&mut s, &load.eval_tx, judge);
        self.last_t = now;
        self.last_sys = machine;
        self.last_self = me;
        self.last_counters = counters;
        self.marks.push((pub_next, s.t_s));
        s
    }

    /// What the scrape says: connections by mode, drops and heap allocations per second,
    /// and what the relay sent the honest viewers and the NAK attacker.
    fn relay_figures(
        &mut self,
        s: &mut Sample,
        m: &RelayMetrics,
        dt: f64,
        honest_ids: &[u32],
        attacker_ids: &[u32],
    ) {
        s.conns_handshake = m.current("handshake");
        s.conns_request = m.current("request");
        s.conns_publish = m.current("publish");
        s.conns_total = m.connections_total.map(|v| v as u64);
        s.dropped_per_s = self
            .last_dropped
            .map(|l| (m.dropped_total - l).max(0.0) / dt);
        s.heap_allocs_per_s = match (self.last_heap, m.heap_allocations) {
            (Some(a), Some(b)) => Some((b - a).max(0.0) / dt),
            _ => None,
        };
        self.last_dropped = Some(m.dropped_total);
        self.last_heap = m.heap_allocations;
        if !honest_ids.is_empty() {
            let h = self.honest_deltas.step(m, honest_ids);
            s.honest_relay_pkts_per_s = Some(
                (h.data_packets_sent + h.data_packets_sent_kernel) / dt / honest_ids.len() as f64,
            );
        }
        if !attacker_ids.is_empty() {
            let a = self.deltas.step(m, attacker_ids);
            s.attacker_relay_bytes_per_s = Some(a.data_bytes_sent / dt);
            s.attacker_retrans_per_s = Some(a.data_packets_retransmitted / dt);
        }
    }

    /// Delivery of the judged range: the viewers' thread is asked what each honest viewer
    /// got of it.
    fn judge(
        &mut self,
        s: &mut Sample,
        evals: &mpsc::Sender<EvalRequest>,
        judge: Option<(Mark, Mark)>,
    ) {
        let (tx, rx) = mpsc::channel();
        let reply = judge.and_then(|((from, _), (to, _))| {
            evals
                .send(EvalRequest {
                    from,
                    to,
                    reply: tx,
                })
                .ok()?;
            rx.recv_timeout(Duration::from_secs(5)).ok()
        });
        if let (Some(((from, from_s), (to, to_s))), Some(r)) = (judge, reply) {
            s.delivery_from = from;
            s.delivery_to = to;
            s.delivery_from_s = Some(from_s);
            s.delivery_to_s = Some(to_s);
            if to > from && !r.per_viewer.is_empty() {
                let n = (to - from) as f64;
                let ratios: Vec<f64> = r.per_viewer.iter().map(|v| v.received as f64 / n).collect();
                s.honest_delivery_min = ratios.iter().copied().reduce(f64::min);
                s.honest_delivery_mean = Some(ratios.iter().sum::<f64>() / ratios.len() as f64);
                s.honest_on_time_min = r
                    .per_viewer
                    .iter()
                    .map(|v| v.on_time as f64 / n)
                    .reduce(f64::min);
                s.honest_gaps = r.per_viewer.iter().map(|v| v.gaps).sum();
                s.honest_max_gap = r.per_viewer.iter().map(|v| v.max_gap).max().unwrap_or(0);
            }
            s.honest_lost = r.lost.saturating_sub(self.last_lost);
            s.honest_given_up = r.given_up.saturating_sub(self.last_given_up);
            self.last_lost = r.lost;
            self.last_given_up = r.given_up;
        }
    }
}
