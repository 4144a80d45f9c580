//! The HSv5 body and extension parsers, and the bytes as a caller's handshake to a relay's
//! listener (as sent, and as a conclusion with a valid cookie and a minted session key).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stsync_user::fuzzing::handshake(data));
