//! Plugin output columns under libFuzzer (see `weir_fuzz::plugin_output`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_fuzz::plugin_output(data));
