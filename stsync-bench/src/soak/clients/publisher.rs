//! The publisher: the load generator's (`loadgen::spawn_publisher`), one paced stream for
//! the whole run, restarted (with a fresh key, continuing the payload numbering) if the
//! relay drops it.

use super::keys::KeyPool;
use super::shared::Shared;
use crate::loadgen::{new_publisher, spawn_publisher, Media, PubShared, PublisherOutcome};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use stsync_user::os::udp;

/// The publisher of the moment: restarted (with a fresh key, continuing the payload
/// numbering) if the relay drops it.
pub struct Pub {
    cfg: PubCfg,
    pub shared: Arc<PubShared>,
    thread: Option<JoinHandle<PublisherOutcome>>,
    pub restarts: u32,
}

pub struct PubCfg {
    pub relay: SocketAddrV4,
    /// The publisher's source address.
    pub src: Ipv4Addr,
    pub sid_template: String,
    pub media: Media,
    pub deadline: Instant,
    pub t0: Instant,
    pub base_ns: u64,
}

impl PubCfg {
    fn spawn(
        &self,
        key: &str,
        first_index: u64,
    ) -> Result<(Arc<PubShared>, JoinHandle<PublisherOutcome>)> {
        let fd =
            udp::udp_socket(SocketAddrV4::new(self.src, 0), 4 << 20).context("publisher socket")?;
        let sid = crate::caller::stream_id(&self.sid_template, "1", key, "publish");
        let (publ, shared) = new_publisher(
            fd,
            self.relay.into(),
            sid,
            &self.media,
            first_index,
            Instant::now(),
        );
        let (t0, base_ns) = (self.t0, self.base_ns);
        let ns_of = move |i: Instant| base_ns + i.saturating_duration_since(t0).as_nanos() as u64;
        let h = spawn_publisher(
            publ,
            self.media.latency_ms,
            self.media.payload,
            ns_of,
            self.deadline,
        )
        .context("starting the publisher thread")?;
        Ok((shared, h))
    }
}

impl Pub {
    /// Starts the publisher with a key from `keys` and waits (up to 10 s) until it
    /// publishes; if it does not, everything stops.
    pub fn start(cfg: PubCfg, keys: &KeyPool, sh: &Shared) -> Result<Pub> {
        let (shared, h) = cfg.spawn(&keys.take().context("no key")?, 0)?;
        let mut publ = Pub {
            cfg,
            shared,
            thread: Some(h),
            restarts: 0,
        };
        let wait_pub = Instant::now() + Duration::from_secs(10);
        while !publ.shared.publishing.load(Relaxed) {
            if publ.thread.as_ref().is_some_and(|t| t.is_finished()) || Instant::now() > wait_pub {
                sh.stop.store(true, Relaxed);
                publ.shared.stop.store(true, Relaxed);
                let why = match publ.thread.take().map(|t| t.join()) {
                    Some(Ok(Err(e))) => format!("{e:#}"),
                    _ => "no answer within 10 s".into(),
                };
                bail!("the publisher could not connect: {why}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(publ)
    }

    pub fn next_index(&self) -> u64 {
        self.shared.next_index.load(Relaxed)
    }

    /// Publisher dropped by the relay: a new one with a fresh key, same numbering.
    pub fn restart_if_lost(&mut self, keys: &KeyPool, sh: &Shared) {
        if !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return;
        }
        let why = match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => format!("{e:#}"),
            Some(Ok(Ok(_))) => "stopped".into(),
            _ => "panicked".into(),
        };
        sh.event(format!("publisher lost ({why}); restarting"));
        let next = self.next_index();
        match keys.take().map(|k| self.cfg.spawn(&k, next)) {
            Some(Ok((shared, h))) => {
                self.shared = shared;
                self.thread = Some(h);
                self.restarts += 1;
            }
            Some(Err(e)) => sh.event(format!("publisher restart failed: {e:#}")),
            None => sh.event("publisher restart: no session key yet"),
        }
    }

    /// Stops the publisher and waits for its thread.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
