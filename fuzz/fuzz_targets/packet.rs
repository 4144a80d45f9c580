//! `Packet::parse`, `Ack::parse` and `loss_ranges`, with encode/parse round trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stsync_user::fuzzing::packet(data));
