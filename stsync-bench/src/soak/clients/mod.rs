//! The soak's SRT clients, each on a thread of its own: the viewers (honest ones that stay
//! the whole run, churn that joins and leaves), the NAK attacker, and the hostile sender
//! (garbage, spoofed and malformed control packets, a reconnecting handshake flood).
//! The publisher is the load generator's (`loadgen::spawn_publisher`).
//!
//! Files: `shared` (counters and state the threads and the sampler share), `keys` (session
//! keys minted ahead), `common` (what every client does), `publisher`; the viewers:
//! `viewers` (their thread and shared socket), `viewer` (one of them, and the pool),
//! `honest` (their delivery record), `churn`; the hostile ones: `attacker` (NAK storms),
//! `hostile` (garbage and spoofs), `flood` (the handshake flood); `rng` (their randomness).

pub mod attacker;
mod churn;
pub mod common;
mod flood;
pub mod honest;
pub mod hostile;
pub mod keys;
pub mod publisher;
mod rng;
pub mod shared;
mod viewer;
pub mod viewers;
