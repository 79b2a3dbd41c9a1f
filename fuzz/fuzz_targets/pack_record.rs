#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lbsync_chunkstore::fuzzing::pack_record(data));
