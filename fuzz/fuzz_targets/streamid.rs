//! The stream ID parser (`#!::` syntax, percent-decoding, hex normalisation).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stsync_user::fuzzing::streamid(data));
