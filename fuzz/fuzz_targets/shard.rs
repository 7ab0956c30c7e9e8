//! `lm_integration_tests::fuzzing::shard` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lm_integration_tests::fuzzing::shard(data));
