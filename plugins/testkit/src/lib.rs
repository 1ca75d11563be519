//! A test plugin that works on the raw WIT batch layout (no Arrow library),
//! as a plugin in another language would. It passes every batch through
//! unchanged, except for the batch holding a row whose int64 `id` column
//! equals one of the configured trigger ids:
//!
//! - `trap_on_id`: the plugin panics (a Wasm trap);
//! - `error_on_id`: it returns a `plugin-error` of kind `input`;
//! - `corrupt_on_id`: it returns string offsets that point past the data;
//! - `drop_column_on_id`: it returns the batch without its last column;
//! - `empty_validity_on_id`: it returns the first column with an empty
//!   validity bitmap (Arrow's own builder panicked on that);
//! - `loop_on_id`: it never returns (for time limits);
//! - `allocate_on_id`: it allocates 256 MiB (for memory limits);
//!
//! and with `trap_always = true` it traps on every batch (a broken
//! version to hot-swap in). `trap_on_id_multiple_of = N` and
//! `error_on_id_multiple_of = N` fail any batch holding an id divisible by
//! N (poison rows, for quarantine).
//!
//! With `stamp = true` it appends two int64 columns: `now_us`, the wall
//! clock read once per row, and `random`, a random number per row (both
//! through WASI, for deterministic replay).
//!
//! With no trigger ids it is the identity, used to measure the cost of
//! moving a batch host -> guest -> host.

use std::cell::RefCell;

use serde::Deserialize;
use weir_sdk::bindings::exports::weir::plugin::transform::Guest;
use weir_sdk::bindings::weir::plugin::host::{Level, log};
use weir_sdk::bindings::weir::plugin::types::{
    Batch, Column, DataType, ErrorKind, Field, PluginError,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    trap_on_id: Option<i64>,
    error_on_id: Option<i64>,
    corrupt_on_id: Option<i64>,
    drop_column_on_id: Option<i64>,
    empty_validity_on_id: Option<i64>,
    loop_on_id: Option<i64>,
    allocate_on_id: Option<i64>,
    trap_on_id_multiple_of: Option<i64>,
    error_on_id_multiple_of: Option<i64>,
    #[serde(default)]
    trap_always: bool,
    #[serde(default)]
    stamp: bool,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings::default());
}

struct Testkit;

impl Guest for Testkit {
    fn init(config: String) -> Result<(), PluginError> {
        let settings: Settings = serde_json::from_str(&config).map_err(|e| PluginError {
            kind: ErrorKind::Config,
            message: format!("invalid testkit config: {e}"),
        })?;
        log(Level::Info, "testkit ready", &[("config".into(), config)]);
        SETTINGS.with(|s| *s.borrow_mut() = settings);
        Ok(())
    }

    fn process(mut input: Batch) -> Result<Vec<Batch>, PluginError> {
        let ids = ids(&input);
        let hit = |id: Option<i64>| id.is_some_and(|id| ids.contains(&id));
        let multiple = |n: Option<i64>| n.is_some_and(|n| ids.iter().any(|id| id % n == 0));
        let (trap, error, corrupt, drop, spin, allocate, empty_validity) = SETTINGS.with(|s| {
            let s = s.borrow();
            (
                s.trap_always || hit(s.trap_on_id) || multiple(s.trap_on_id_multiple_of),
                hit(s.error_on_id) || multiple(s.error_on_id_multiple_of),
                hit(s.corrupt_on_id),
                hit(s.drop_column_on_id),
                hit(s.loop_on_id),
                hit(s.allocate_on_id),
                hit(s.empty_validity_on_id),
            )
        });
        if spin {
            loop {
                std::hint::black_box(());
            }
        }
        if allocate {
            let hog = vec![1u8; 256 << 20];
            std::hint::black_box(&hog);
        }
        if trap {
            panic!("testkit: trap_on_id matched");
        }
        if error {
            return Err(PluginError {
                kind: ErrorKind::Input,
                message: "testkit: error_on_id matched".into(),
            });
        }
        if corrupt {
            corrupt_first_string_column(&mut input);
        }
        if drop {
            input.fields.pop();
            input.columns.pop();
        }
        if empty_validity && let Some(column) = input.columns.first_mut() {
            column.validity = Some(Vec::new());
            column.null_count = 0;
        }
        if SETTINGS.with(|s| s.borrow().stamp) {
            stamp(&mut input);
        }
        Ok(vec![input])
    }
}

/// The values of the int64 column `id`, read straight from its buffer.
fn ids(batch: &Batch) -> Vec<i64> {
    let Some(index) = batch
        .fields
        .iter()
        .position(|f| f.name == "id" && matches!(f.data_type, DataType::Int64))
    else {
        return Vec::new();
    };
    batch.columns[index].buffers[0]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

/// Appends `now_us` and `random`, one reading per row.
fn stamp(batch: &mut Batch) {
    let rows = batch.num_rows as usize;
    let mut now = Vec::with_capacity(rows * 8);
    let mut random = Vec::with_capacity(rows * 8);
    for _ in 0..rows {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        now.extend_from_slice(&us.to_le_bytes());
        let drawn = getrandom::u64().expect("wasi:random") as i64;
        random.extend_from_slice(&drawn.to_le_bytes());
    }
    for (name, values) in [("now_us", now), ("random", random)] {
        batch.fields.push(Field {
            name: name.into(),
            data_type: DataType::Int64,
            nullable: false,
        });
        batch.columns.push(Column {
            len: rows as u64,
            null_count: 0,
            validity: None,
            buffers: vec![values],
        });
    }
}

fn corrupt_first_string_column(batch: &mut Batch) {
    if let Some(index) = batch
        .fields
        .iter()
        .position(|f| matches!(f.data_type, DataType::Utf8))
    {
        let offsets = &mut batch.columns[index].buffers[0];
        let last = offsets.len() - 4;
        offsets[last..].copy_from_slice(&i32::MAX.to_le_bytes());
    }
}

weir_sdk::bindings::__export_transform_world!(Testkit with_types_in weir_sdk::bindings);
