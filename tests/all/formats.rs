//! Source and sink formats beyond JSON lines: Parquet in and out, CSV in,
//! and the console sink.

use std::fs::File;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::common::{Scenario, Spec, assert_ok};

/// Writes `in/<name>` as Parquet; `id` as int32 to exercise the cast to
/// the declared int64, and without `name` (nullable, so it reads as null).
fn write_parquet(s: &Scenario, name: &str, ids: &[i32]) {
    let batch = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int32Array::from(ids.to_vec())) as ArrayRef),
        (
            "amount",
            Arc::new(Float64Array::from(
                ids.iter().map(|i| *i as f64 / 2.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    let file = File::create(s.path("in").join(name)).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn read_parquet_dir(dir: &std::path::Path) -> Vec<RecordBatch> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            ParquetRecordBatchReaderBuilder::try_new(File::open(dir.join(n)).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn parquet_in_parquet_out() {
    let s = Scenario::new(Spec {
        format: "parquet",
        sink: "parquet",
        max_files: Some(1),
        ..Spec::default()
    });
    write_parquet(&s, "a.parquet", &[1, 2]);
    write_parquet(&s, "b.parquet", &[3]);
    let err = assert_ok(&s.run());
    assert!(err.contains("processed in 2 batch(es)"), "{err}");

    let out = read_parquet_dir(&s.path("out"));
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("amount_x2", DataType::Float64, true),
    ]);
    let expected = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![None::<&str>, None, None])),
            Arc::new(Float64Array::from(vec![0.5, 1.0, 1.5])),
            Arc::new(Float64Array::from(vec![2.0, 3.0, 4.0])),
        ],
    )
    .unwrap();
    let got = arrow::compute::concat_batches(&out[0].schema(), &out).unwrap();
    assert_eq!(got.columns(), expected.columns());
}

#[test]
fn parquet_missing_required_column_is_a_clear_error() {
    let s = Scenario::new(Spec {
        format: "parquet",
        ..Spec::default()
    });
    let batch = RecordBatch::try_from_iter(vec![(
        "amount",
        Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
    )])
    .unwrap();
    let file = File::create(s.path("in").join("x.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let err = crate::common::assert_exit(&s.run(), 1);
    assert!(err.contains("required column `id` is missing"), "{err}");
}

#[test]
fn console_sink_prints_each_batch_as_a_table() {
    let s = Scenario::new(Spec {
        sink: "console",
        ..Spec::default()
    });
    s.json_inputs(1, 2);
    let out = s.run();
    assert_ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Batch: 0"), "{stdout}");
    assert!(
        stdout.contains("| id | name | amount | amount_x2 |"),
        "{stdout}"
    );
    assert!(
        stdout.contains("| 2  | n2   | 6.5    | 14.0      |"),
        "{stdout}"
    );
}
