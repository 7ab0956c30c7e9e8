//! `lm_integration_tests::fuzzing::task_jsonl` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lm_integration_tests::fuzzing::task_jsonl(data));
