//! The SRT protocol core: wire formats and the per-connection state machines. Sans-IO: bytes
//! and `now` in, packets and wake-up times out; no sockets, no clock reads.

pub mod caller;
pub mod cookie;
pub mod crypto;
pub mod handshake;
pub mod listener;
pub mod loss;
pub mod packet;
pub mod receiver;
pub mod rtt;
pub mod seq;
pub mod streamid;
