//! What a reload of config.json changes in a running relay: streams added and removed,
//! a stream's passphrases, the limits. Every worker applies the same commands in the same
//! order (the reload is serialised, see `crate::reload`), so a stream gets the same slot
//! on each: its index in `streams`, in `Shared` and in the feeds' headers.

use super::stats::CloseReason;
use super::stream::Stream;
use super::{AddressLimits, CommandError, Relay, Reply, RouteEvent, StreamConfig};
use std::time::{Duration, Instant};
use tracing::info;

/// The limits a reload may change (config.json's names): they apply to new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    pub max_connections: usize,
    pub max_viewers_per_stream: usize,
    pub per_address: AddressLimits,
    pub idle_timeout: Duration,
    pub session_ttl: Duration,
}

impl Relay {
    /// A new stream, in the first retired slot or a new one.
    pub(super) fn add_stream(&mut self, cfg: StreamConfig) -> Result<Reply, CommandError> {
        if self.by_resource.contains_key(&cfg.resource) {
            return Err(CommandError::StreamExists);
        }
        let i = match self.streams.iter().position(|s| s.retired) {
            Some(i) => i,
            None if self.streams.len() < super::MAX_STREAMS => {
                self.streams.push(Stream::new(cfg.clone()));
                self.streams.len() - 1
            }
            None => return Err(CommandError::TooManyStreams),
        };
        let mut s = Stream::new(cfg);
        // The slot's epoch as every worker sees it: packets of a publisher before the
        // retirement carry older ones and are dropped (see `Shared::retire`).
        s.epoch = self.shared.epoch(i);
        if s.delay_us > 0 {
            self.events.push_back(RouteEvent::StreamDelay {
                resource: s.resource.clone(),
                delay_us: s.delay_us,
            });
        }
        info!(resource = %s.resource, slot = i, worker = self.worker, "stream added");
        self.by_resource.insert(s.resource.clone(), i);
        self.streams[i] = s;
        Ok(Reply::Done)
    }

    /// Closes the stream's connections (SHUTDOWN to each), forgets its keys and retires
    /// its slot.
    pub(super) fn remove_stream(
        &mut self,
        now: Instant,
        resource: &str,
    ) -> Result<Reply, CommandError> {
        let i = self
            .by_resource
            .remove(resource)
            .ok_or(CommandError::UnknownStream)?;
        let mut ids: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.stream == i)
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        let n = ids.len();
        for id in ids {
            self.close(now, id, CloseReason::StreamRemoved);
        }
        self.shared.retire(i);
        self.shared.keys().forget(resource);
        let s = &mut self.streams[i];
        s.retired = true;
        s.pull = None;
        s.ring = None;
        s.remote = None;
        self.events.push_back(RouteEvent::StreamRemoved {
            resource: resource.to_string(),
        });
        info!(
            resource,
            connections = n,
            worker = self.worker,
            "stream removed"
        );
        Ok(Reply::Done)
    }

    /// New passphrases and key length: connections open already keep the keys they
    /// agreed on in their handshake.
    pub(super) fn update_stream(&mut self, cfg: StreamConfig) -> Result<Reply, CommandError> {
        let &i = self
            .by_resource
            .get(&cfg.resource)
            .ok_or(CommandError::UnknownStream)?;
        let s = &mut self.streams[i];
        s.publish_passphrase = cfg.publish_passphrase;
        s.view_passphrase = cfg.view_passphrase;
        s.pbkeylen = cfg.pbkeylen;
        Ok(Reply::Done)
    }

    /// New limits for new connections; those open already stay (a viewer count over a
    /// lowered limit only keeps new viewers out until it is under again).
    pub(super) fn set_limits(&mut self, l: RelayLimits) {
        self.cfg.max_connections = l.max_connections;
        self.cfg.max_viewers_per_stream = l.max_viewers_per_stream;
        self.cfg.per_address = l.per_address;
        self.cfg.idle_timeout = l.idle_timeout;
        self.cfg.session_ttl = l.session_ttl;
        self.shared.addresses().set_limits(l.per_address);
        self.shared.keys().set_ttl(l.session_ttl);
    }
}
