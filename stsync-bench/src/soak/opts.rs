//! The soak's options (`stsync-bench soak --help`).

use crate::loadgen::Media;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    Userspace,
    Ebpf,
    Auto,
}

impl Datapath {
    pub fn arg(self) -> &'static str {
        match self {
            Datapath::Userspace => "userspace",
            Datapath::Ebpf => "ebpf",
            Datapath::Auto => "auto",
        }
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct SoakOpts {
    /// How long the load runs, minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Output directory: samples.csv, samples.json, soak.svg, summary.txt, relay.log.
    #[arg(long, default_value = "target/soak")]
    pub out: PathBuf,
    /// The relay binary (default: stsync-proxy next to this executable).
    #[arg(long)]
    pub relay_bin: Option<PathBuf>,
    /// The relay's --datapath. On loopback its eBPF program attaches to `lo` only.
    #[arg(long, value_enum, default_value_t = Datapath::Auto)]
    pub datapath: Datapath,
    /// The relay's --ebpf-object (default: its own default).
    #[arg(long)]
    pub ebpf_object: Option<PathBuf>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub media: Media,
    /// Honest viewers, connected for the whole run.
    #[arg(long, default_value_t = 5)]
    pub viewers: u32,
    /// Churn viewers joining per second (0: no churn).
    #[arg(long, default_value_t = 2.0)]
    pub churn_rate: f64,
    /// Shortest and longest life of a churn viewer, seconds (uniform in between).
    #[arg(long, default_value_t = 2.0)]
    pub churn_life_min: f64,
    #[arg(long, default_value_t = 20.0)]
    pub churn_life_max: f64,
    /// Fraction of churn viewers that die without SHUTDOWN (stop answering) instead of
    /// leaving politely.
    #[arg(long, default_value_t = 0.5)]
    pub churn_silent: f64,
    /// Garbage datagrams per second (0: none).
    #[arg(long, default_value_t = 50.0)]
    pub garbage_rate: f64,
    /// Spoofed/malformed control packets for live connections per second (0: none).
    #[arg(long, default_value_t = 20.0)]
    pub spoof_rate: f64,
    /// No NAK attacker at all.
    #[arg(long)]
    pub no_nak_storm: bool,
    /// NAKs per second during a storm.
    #[arg(long, default_value_t = 100.0)]
    pub nak_rate: f64,
    /// Loss ranges in each storm NAK (182 two-word ranges fill one 1472-byte datagram).
    #[arg(long, default_value_t = 182)]
    pub nak_ranges: u32,
    /// Packets each storm NAK covers, back from the attacker's newest (at most what it saw).
    #[arg(long, default_value_t = 8192)]
    pub nak_span: u32,
    /// Hostile period (s): a NAK storm and a handshake flood each happen once per period.
    #[arg(long, default_value_t = 60.0)]
    pub hostile_every: f64,
    /// Storm start within each period (s) and length (s).
    #[arg(long, default_value_t = 20.0)]
    pub storm_at: f64,
    #[arg(long, default_value_t = 5.0)]
    pub storm_secs: f64,
    /// No handshake flood.
    #[arg(long)]
    pub no_hs_flood: bool,
    /// Flood start within each period (s), length (s) and handshake attempts per second.
    #[arg(long, default_value_t = 40.0)]
    pub flood_at: f64,
    #[arg(long, default_value_t = 5.0)]
    pub flood_secs: f64,
    #[arg(long, default_value_t = 200.0)]
    pub flood_rate: f64,
    /// No hostile traffic of any kind (garbage, spoofs, NAK storms, flood).
    #[arg(long)]
    pub no_hostile: bool,
    /// Seed of the garbage, spoofs and churn (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// RUST_LOG for the relay.
    #[arg(long, default_value = "info")]
    pub relay_log: String,
}
