//! `lm_integration_tests::fuzzing::weights_index` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lm_integration_tests::fuzzing::weights_index(data));
