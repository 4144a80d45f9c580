//! The publisher-side receiver (ACK/NAK/loss list) driven by operations over a virtual clock.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stsync_user::fuzzing::receiver(data));
