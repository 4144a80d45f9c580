//! The relay's queued datagrams as the datapath sees them: lent by
//! [`Relay::poll_transmit`](super::Relay::poll_transmit), each one a header from the
//! outbox and, for data, a payload still in its stream's ring.

use super::outbox::Outbox;
use super::stream::{self, Stream};
use std::net::SocketAddr;

/// One datagram to send: `head` then `payload`, to `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub dst: SocketAddr,
    pub head: &'a [u8],
    pub payload: &'a [u8],
}

/// The relay's queued datagrams, lent to the datapath by
/// [`Relay::poll_transmit`](super::Relay::poll_transmit); dropping it empties the outbox.
pub struct Transmits<'a> {
    out: &'a mut Outbox,
    streams: &'a [Stream],
}

impl<'a> Transmits<'a> {
    pub(super) fn new(out: &'a mut Outbox, streams: &'a [Stream]) -> Self {
        Transmits { out, streams }
    }

    pub fn len(&self) -> usize {
        self.out.items().len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Datagram `i` (`i < len()`).
    pub fn get(&self, i: usize) -> Datagram<'_> {
        let t = &self.out.items()[i];
        Datagram {
            dst: t.dst,
            head: self.out.head(t),
            payload: stream::payload(self.streams, t.payload),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Datagram<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl Drop for Transmits<'_> {
    fn drop(&mut self) {
        self.out.clear();
    }
}
