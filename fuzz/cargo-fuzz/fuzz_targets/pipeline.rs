//! Pipeline text under libFuzzer (see `weir_fuzz::pipeline`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::pipeline(data));
