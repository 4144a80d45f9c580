//! `stsync-bench soak`: the relay under a long, realistic and partly hostile load, sampled
//! every few seconds for leaks and degradation (memory, CPU, file descriptors, connections,
//! honest viewers' delivery, what an abusive viewer gets out of it).
//!
//! Everything runs on loopback (127/8): the relay is started with a config written here, on
//! free ports of 127.0.0.1; clients use their own 127.0.x.y source addresses so the relay
//! sees distinct peers:
//!
//! ```text
//! publisher       127.0.5.1        one paced stream for the whole run (the load generator's)
//! honest viewers  127.0.2.1 + i    connected the whole run; delivery judged per interval
//! churn viewers   127.0.4.0/22     join at --churn-rate, leave with SHUTDOWN or die silently
//! NAK attacker    127.0.3.1        a proper viewer that sends NAK storms
//! flood           127.0.3.2        bursts of handshakes that are always refused
//! garbage, spoofs 127.0.3.3        random datagrams; control packets for live connections
//! ```
//!
//! The relay runs in its own process group (Ctrl-C reaches only this tool, which then
//! stops it and writes what it has) and dies with this process (PR_SET_PDEATHSIG).
//!
//! Files: `opts` (the options), `relay` (the relay's process), `load` (the clients'
//! addresses; starting, keeping and stopping the clients of `clients`), `sampler` (a row per
//! interval from /proc, the clients' counters and a scrape, `metrics`), `sample` (the row),
//! `schedule` (the storm and flood windows), `summary`, `plot` (soak.svg), `results` (what a
//! run leaves). `run` below is the run's outline.

mod clients;
mod load;
mod metrics;
mod opts;
mod plot;
mod relay;
mod results;
mod sample;
mod sampler;
mod schedule;
mod summary;

pub use opts::{Datapath, SoakOpts};
pub use plot::replot;
pub use results::Ending;

use anyhow::{bail, Context, Result};
use load::Load;
use relay::{exit_reason, log_tail, Relay};
use sample::Rows;
use sampler::Sampler;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use stsync_user::os::proc::loadavg;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// One soak: the relay, the load on it sampled until --minutes are up (or the relay dies,
/// or Ctrl-C), a last row for the tail of the stream, then what the run leaves.
pub fn run(o: &SoakOpts) -> Result<Ending> {
    if o.minutes <= 0.0 || o.sample_secs <= 0.0 {
        bail!("--minutes and --sample-secs must be positive");
    }
    o.media.check()?;
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    install_signal_handlers();
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });

    // The relay.
    let (mut relay, mut info) = Relay::launch(o, seed)?;

    // The load.
    let duration = Duration::from_secs_f64(o.minutes * 60.0);
    let t0 = Instant::now();
    let end = t0 + duration;
    let hard_deadline = end + Duration::from_secs(120);
    let mut load = Load::start(o, &relay, seed, t0, hard_deadline)?;
    let mut sampler = Sampler::start(relay.process.pid(), relay.http, t0, &load);
    let mut rows = Rows::create(&o.out.join("samples.csv"))?;
    eprintln!(
        "soak: load running for {:.1} min: publisher {:.1} Mbit/s, {} honest viewers, churn {}/s, hostile {}",
        o.minutes,
        o.media.bitrate as f64 / 1e6,
        o.viewers,
        o.churn_rate,
        if o.no_hostile { "off" } else { "on" }
    );
    let (ending, mut failure) = sample_until(
        t0,
        end,
        o.sample_secs,
        &mut relay,
        &mut load,
        &mut sampler,
        &mut rows,
    )?;

    // Wind down: hostile traffic and churn stop, honest viewers get a moment for the last
    // packets, then the tail of the stream is judged in one last row.
    load.quiesce();
    if failure.is_none() && ending == Ending::Completed {
        // The last row judged [marks[k-2], marks[k-1]); what is left starts at marks[k-1].
        let prev = sampler.marks[sampler.marks.len().saturating_sub(2)];
        let to = (load.publ.next_index(), t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(1000));
        if relay.process.child.try_wait()?.is_none() {
            rows.push(sampler.take(&load, Some((prev, to))))?;
        }
    }
    load.stop();
    info.loadavg_end = loadavg();
    if failure.is_none() {
        if let Some(status) = relay.process.child.try_wait()? {
            failure = Some(format!(
                "the relay died while the soak wound down ({}):\n{}",
                exit_reason(status),
                log_tail(&relay.log_path, 15)
            ));
        }
    }
    drop(relay);

    // Results.
    results::write(o, &info, &rows.samples, &load, &failure, ending)?;
    if let Some(f) = failure {
        bail!("{f}");
    }
    Ok(ending)
}

/// Samples every --sample-secs until `end` and keeps the publisher going; stops early when
/// the relay dies, on Ctrl-C, or when the viewers' thread ends. How the load ended, and why
/// the run failed if it did.
fn sample_until(
    t0: Instant,
    end: Instant,
    sample_secs: f64,
    relay: &mut Relay,
    load: &mut Load,
    sampler: &mut Sampler,
    rows: &mut Rows,
) -> Result<(Ending, Option<String>)> {
    let interval = Duration::from_secs_f64(sample_secs);
    let mut next_sample = t0 + interval;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if let Some(status) = relay.process.child.try_wait()? {
            let why = format!(
                "the relay died at t={:.1} s ({}); last lines of its log:\n{}",
                t0.elapsed().as_secs_f64(),
                exit_reason(status),
                log_tail(&relay.log_path, 15)
            );
            load.sh
                .event(format!("relay died: {}", exit_reason(status)));
            return Ok((Ending::Completed, Some(why)));
        }
        if INTERRUPTED.load(Relaxed) {
            load.sh.event("interrupted");
            return Ok((Ending::Interrupted, None));
        }
        if let Some(why) = load.thread_ended_early() {
            return Ok((Ending::Completed, Some(why)));
        }
        if now < end {
            load.keep_publishing();
        }
        if now >= next_sample || now >= end {
            let k = sampler.marks.len();
            let judge = (k >= 2).then(|| (sampler.marks[k - 2], sampler.marks[k - 1]));
            rows.push(sampler.take(load, judge))?;
            next_sample += interval;
            if now >= end {
                return Ok((Ending::Completed, None));
            }
        }
    }
}
