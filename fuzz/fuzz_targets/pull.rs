//! An edge relay pulling a stream from an upstream the input plays, hostile or not.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stsync_user::fuzzing::pull(data));
