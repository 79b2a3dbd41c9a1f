#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbsync_crypt::fuzzing::open_sealed(data));
