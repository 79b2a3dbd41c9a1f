#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbsync_proto::fuzzing::block_delta(data));
