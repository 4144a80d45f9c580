//! `Relay::handle_datagram` / `handle_timeout` with peers, handshakes and a virtual clock.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stsync_user::fuzzing::relay(data);
});
