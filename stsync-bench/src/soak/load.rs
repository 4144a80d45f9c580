//! The load: the clients' source addresses; starting them (session keys minted ahead, the
//! publisher, the viewers, the NAK attacker, the hostile sender), keeping them going while
//! the run lasts, and stopping them.

use super::clients::attacker::{attacker_thread, AttackerCfg};
use super::clients::common::Common;
use super::clients::honest::EvalRequest;
use super::clients::hostile::{hostile_thread, HostileCfg};
use super::clients::keys::KeyPool;
use super::clients::publisher::{Pub, PubCfg};
use super::clients::shared::Shared;
use super::clients::viewers::{viewers_thread, ViewersCfg};
use super::opts::SoakOpts;
use super::relay::{Relay, TOKEN};
use super::schedule::Schedule;
use anyhow::{bail, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stsync_user::os::clock;

// The clients' source addresses (the table in the docs of `soak`).
const PUBLISHER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 1);
const HONEST_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 1);
const CHURN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 1);
const CHURN_IPS: u32 = 1000;
const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 1);
const FLOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 2);
const GARBAGE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 3, 3);

type Threads = Vec<(&'static str, JoinHandle<Result<()>>)>;

/// The clients of a run, running.
pub struct Load {
    pub sh: Arc<Shared>,
    keys: Arc<KeyPool>,
    pub publ: Pub,
    /// The client threads but the publisher's, by name.
    threads: Threads,
    /// The sampler's questions to the viewers' thread.
    pub eval_tx: mpsc::Sender<EvalRequest>,
    pub storms: Schedule,
    pub flood: Schedule,
}

impl Load {
    /// Starts every client against `relay` (the publisher first, once keys are there),
    /// then waits (bounded) for the honest viewers before delivery is judged. The load
    /// started at `t0`; nothing runs past `hard_deadline`.
    pub fn start(
        o: &SoakOpts,
        relay: &Relay,
        seed: u64,
        t0: Instant,
        hard_deadline: Instant,
    ) -> Result<Load> {
        let (srt, http) = (relay.srt, relay.http);
        let sh = Arc::new(Shared::new(t0));
        let keys = Arc::new(KeyPool::new());
        let common = Common {
            relay: srt,
            stream: "1".into(),
            sid_template: "#!::r={stream},s={key},m={mode}".into(),
            latency_ms: o.media.latency_ms,
            seed,
            hard_deadline,
        };
        let (storms, flood) = schedules(o);
        let threads: Threads = vec![("keys", mint_keys(o, &keys, &sh, http)?)];

        let pcfg = PubCfg {
            relay: srt,
            src: PUBLISHER_IP,
            sid_template: common.sid_template.clone(),
            media: o.media.clone(),
            deadline: hard_deadline,
            t0,
            base_ns: clock::monotonic_ns(),
        };
        let publ = Pub::start(pcfg, &keys, &sh)?;

        let (eval_tx, eval_rx) = mpsc::channel();
        let mut load = Load {
            sh,
            keys,
            publ,
            threads,
            eval_tx,
            storms,
            flood,
        };
        load.spawn_clients(o, &common, eval_rx)?;
        load.wait_for_viewers(o.viewers);
        Ok(load)
    }

    /// The viewers, the NAK attacker (if there are storms) and the hostile sender (if
    /// there is anything for it to send), each on its thread.
    fn spawn_clients(
        &mut self,
        o: &SoakOpts,
        common: &Common,
        eval_rx: mpsc::Receiver<EvalRequest>,
    ) -> Result<()> {
        let hostile = !o.no_hostile;
        let (storms, flood) = (self.storms, self.flood);
        let pkts_per_sec = o.media.pkts_per_sec();
        {
            let cfg = ViewersCfg {
                common: common.clone(),
                honest: o.viewers,
                honest_ip: HONEST_IP,
                churn_ip: CHURN_IP,
                churn_ips: CHURN_IPS,
                churn_rate: o.churn_rate,
                churn_life: (o.churn_life_min, o.churn_life_max.max(o.churn_life_min)),
                churn_silent: o.churn_silent,
                ring: (pkts_per_sec * (3.0 * o.sample_secs + 30.0)) as usize,
            };
            let (keys, sh) = (self.keys.clone(), self.sh.clone());
            self.threads.push((
                "viewers",
                std::thread::Builder::new()
                    .name("viewers".into())
                    .spawn(move || viewers_thread(cfg, keys, sh, eval_rx))?,
            ));
        }
        if storms.enabled {
            let cfg = AttackerCfg {
                common: common.clone(),
                src: ATTACKER_IP,
                storms,
                nak_rate: o.nak_rate,
                nak_ranges: o.nak_ranges,
                nak_span: o.nak_span,
            };
            let (keys, sh) = (self.keys.clone(), self.sh.clone());
            self.threads.push((
                "attacker",
                std::thread::Builder::new()
                    .name("attacker".into())
                    .spawn(move || attacker_thread(cfg, keys, sh))?,
            ));
        }
        if hostile && (o.garbage_rate > 0.0 || o.spoof_rate > 0.0 || flood.enabled) {
            let cfg = HostileCfg {
                common: common.clone(),
                garbage_src: GARBAGE_IP,
                garbage_rate: o.garbage_rate,
                spoof_rate: o.spoof_rate,
                flood_src: FLOOD_IP,
                flood,
                flood_rate: o.flood_rate,
            };
            let sh = self.sh.clone();
            self.threads.push((
                "hostile",
                std::thread::Builder::new()
                    .name("hostile".into())
                    .spawn(move || hostile_thread(cfg, sh))?,
            ));
        }
        Ok(())
    }

    /// Wait (bounded) for the honest viewers, then start judging delivery.
    fn wait_for_viewers(&self, viewers: u32) {
        let sh = &self.sh;
        let wait_viewers = Instant::now() + Duration::from_secs(10);
        while sh.honest_connected.load(Relaxed) < viewers && Instant::now() < wait_viewers {
            std::thread::sleep(Duration::from_millis(20));
        }
        if sh.honest_connected.load(Relaxed) < viewers {
            sh.event(format!(
                "only {}/{} honest viewers connected after 10 s",
                sh.honest_connected.load(Relaxed),
                viewers
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// A client thread that ended early goes to the events; if it was the viewers', the
    /// run cannot go on: why is returned.
    pub fn thread_ended_early(&mut self) -> Option<String> {
        let (name, _) = self.threads.iter().find(|(_, t)| t.is_finished())?;
        let name = *name;
        let i = self
            .threads
            .iter()
            .position(|(n, _)| *n == name)
            .expect("found");
        let (_, t) = self.threads.swap_remove(i);
        let why = match t.join() {
            Ok(Ok(())) => "stopped".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "panicked".to_string(),
        };
        self.sh
            .event(format!("the {name} thread ended early: {why}"));
        (name == "viewers").then(|| format!("the viewers thread ended early: {why}"))
    }

    /// Publisher dropped by the relay: a new one with a fresh key, same numbering.
    pub fn keep_publishing(&mut self) {
        self.publ.restart_if_lost(&self.keys, &self.sh);
    }

    /// No more joins, leaves or hostile traffic.
    pub fn quiesce(&self) {
        self.sh.quiesce.store(true, Relaxed);
    }

    /// Stops every client and waits for it; a thread that failed goes to the events.
    pub fn stop(&mut self) {
        self.sh.stop.store(true, Relaxed);
        self.publ.stop();
        for (name, t) in std::mem::take(&mut self.threads) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.sh.event(format!("the {name} thread failed: {e:#}")),
                Err(_) => self.sh.event(format!("the {name} thread panicked")),
            }
        }
    }
}

/// When the NAK storms and the handshake floods are on (neither with --no-hostile).
fn schedules(o: &SoakOpts) -> (Schedule, Schedule) {
    let hostile = !o.no_hostile;
    let storms = Schedule {
        enabled: hostile && !o.no_nak_storm,
        first: o.storm_at,
        every: o.hostile_every,
        secs: o.storm_secs,
    };
    let flood = Schedule {
        enabled: hostile && !o.no_hs_flood,
        first: o.flood_at,
        every: o.hostile_every,
        secs: o.flood_secs,
    };
    (storms, flood)
}

/// The session key minter's thread, keeping a few keys ahead of the viewers and the churn;
/// returns once the honest viewers and the publisher have theirs (or stops everything).
fn mint_keys(
    o: &SoakOpts,
    keys: &Arc<KeyPool>,
    sh: &Arc<Shared>,
    http: SocketAddr,
) -> Result<JoinHandle<Result<()>>> {
    let minter = {
        let (keys, sh) = (keys.clone(), sh.clone());
        let target = (o.churn_rate * 4.0) as usize + o.viewers as usize + 8;
        std::thread::Builder::new()
            .name("keys".into())
            .spawn(move || {
                keys.run(http, "1", TOKEN, target, &sh);
                Ok(())
            })?
    };
    let wait_keys = Instant::now() + Duration::from_secs(10);
    while keys.len() < o.viewers as usize + 2 {
        if Instant::now() > wait_keys {
            sh.stop.store(true, Relaxed);
            bail!("could not mint session keys from {http}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(minter)
}
