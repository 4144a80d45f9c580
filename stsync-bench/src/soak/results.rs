//! What a run leaves: samples.json (the run, the outcome, the summary, the clients' totals,
//! the events and the samples), soak.svg, and summary.txt, also printed.

use super::clients::shared::NAMES;
use super::load::Load;
use super::opts::SoakOpts;
use super::plot::plot;
use super::relay::RunInfo;
use super::sample::Sample;
use super::summary::{summarize, summary_text, Summary};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// How a soak ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    Interrupted,
}

#[derive(Debug, Serialize)]
struct Results<'a> {
    run: &'a RunInfo,
    /// Why the soak did not complete (relay died, interrupted), if so.
    outcome: String,
    summary: Summary,
    totals: BTreeMap<&'static str, u64>,
    flood_rejections: BTreeMap<u32, u64>,
    events: Vec<(f64, String)>,
    samples: &'a [Sample],
}

/// Writes samples.json, soak.svg and summary.txt, and prints the summary.
pub fn write(
    o: &SoakOpts,
    info: &RunInfo,
    samples: &[Sample],
    load: &Load,
    failure: &Option<String>,
    ending: Ending,
) -> Result<()> {
    let summary = summarize(samples);
    let totals: BTreeMap<&'static str, u64> =
        NAMES.iter().copied().zip(load.sh.snapshot()).collect();
    let flood_rejections = load.sh.flood_codes.lock().expect("codes").clone();
    let events = load.sh.events.lock().expect("events").clone();
    let outcome = match (failure, ending) {
        (Some(f), _) => format!("FAILED: {}", f.lines().next().unwrap_or_default()),
        (None, Ending::Interrupted) => "interrupted".to_string(),
        (None, Ending::Completed) => "completed; the relay was alive at the end".to_string(),
    };
    let results = Results {
        run: info,
        outcome: outcome.clone(),
        summary: summary.clone(),
        totals: totals.clone(),
        flood_rejections: flood_rejections.clone(),
        events: events.clone(),
        samples,
    };
    std::fs::write(
        o.out.join("samples.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    if let Err(e) = plot(samples, &load.storms, &load.flood, &o.out.join("soak.svg")) {
        eprintln!("soak: plot failed: {e:#}");
    }
    let extra = extra_lines(o, info, load, &totals, &flood_rejections);
    let run_line = format!(
        "soak: {:.1} min requested, {:.0} s sampled, datapath {}, {} samples, relay {}",
        o.minutes,
        summary.duration_s,
        info.datapath.as_deref().unwrap_or("?"),
        summary.samples,
        info.relay_bin
    );
    let text = summary_text(&summary, &run_line, &outcome, &extra);
    std::fs::write(o.out.join("summary.txt"), &text)?;
    print!("{text}");
    Ok(())
}

/// The summary's lines about the clients and the files.
fn extra_lines(
    o: &SoakOpts,
    info: &RunInfo,
    load: &Load,
    totals: &BTreeMap<&'static str, u64>,
    flood_rejections: &BTreeMap<u32, u64>,
) -> Vec<String> {
    let sh = &load.sh;
    let t = |k: &str| totals.get(k).copied().unwrap_or(0);
    vec![
        format!(
            "idle relay       RSS {} KiB, {} fds before the load",
            info.rss_kb_idle.unwrap_or(0),
            info.fds_idle.unwrap_or(0)
        ),
        format!(
            "churn            {} joined, {} left with SHUTDOWN, {} died silently, {} failed to connect, {} closed by the relay, {} joins skipped (no key); {:.1} MB sent to dead viewers after they died",
            t("churn_joined"), t("churn_left"), t("churn_died"), t("churn_failed"), t("churn_closed_by_relay"), t("churn_no_key"), t("to_dead_bytes") as f64 / 1e6
        ),
        format!(
            "dead viewers     the relay kept sending to a silently dead viewer for at most {:.1} s; {} were still being sent data 30 s after they died",
            sh.dead_linger_max_ms.load(Relaxed) as f64 / 1e3, t("dead_not_closed")
        ),
        format!(
            "viewers' socket  {} datagrams for no known connection, {} from a wrong source",
            t("stray"), t("wrong_source")
        ),
        format!(
            "NAKs             {} storm NAKs sent; attacker got {} data packets ({} retransmissions), reconnected {} times",
            t("naks_sent"), t("attacker_rx_packets"), t("attacker_rexmit_packets"), t("attacker_reconnects")
        ),
        format!(
            "handshake flood  {} attempts, {} cookies, {} rejected {:?}, {} accepted, {} unanswered",
            t("flood_attempts"), t("flood_cookies"), t("flood_rejected"), flood_rejections, t("flood_accepted"), t("flood_unanswered")
        ),
        format!(
            "other hostile    {} garbage datagrams, {} spoofed control/data packets",
            t("garbage_sent"), t("spoof_sent")
        ),
        format!(
            "honest viewers   {} reconnects; publisher restarts {}",
            t("honest_reconnects"), load.publ.restarts
        ),
        format!(
            "files            {} (samples.csv, samples.json, soak.svg, summary.txt, relay.log, relay.json)",
            o.out.display()
        ),
    ]
}
