//! Weir's integration tests: one binary, one module per area. They run the
//! real `weir` binary and real Wasm components built from `plugins/`.

mod attacks;
mod bad_input;
mod browser;
mod chained;
mod checkpoint_inspect;
mod cluster;
mod common;
// In a real browser (Chromium): early, so it overlaps the long tests.
mod console;
mod continuous;
mod crash;
mod delta;
mod deploy;
// Against Apache Spark; early in the order, so its minutes overlap the
// many short tests rather than follow the long ones at the end.
mod differential;
mod durability;
mod foreach_batch;
mod formats;
mod fuzz;
mod golden;
mod hostile_files;
mod joins;
mod kafka;
mod parallel;
mod pg;
mod plugin_projects;
mod plugins;
mod quarantine;
mod retention;
mod s3;
mod serve;
mod soak;
mod stateful;
mod stream_joins;
mod triggers;
mod windows;
