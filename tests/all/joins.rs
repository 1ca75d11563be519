//! Stream-static joins: every batch joined with a table read from files,
//! inner and left, refreshed on a schedule.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{assert_ok, committed_json_rows, run, weir};

/// Orders as a stream; customers (CSV) as the table.
fn setup(how: &str, refresh: &str, trigger: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("orders")).unwrap();
    std::fs::create_dir_all(dir.path().join("customers")).unwrap();
    std::fs::write(
        dir.path().join("orders/a.json"),
        concat!(
            "{\"id\": 1, \"customer\": \"c1\", \"amount\": 10.0}\n",
            "{\"id\": 2, \"customer\": \"c2\", \"amount\": 20.0}\n",
            "{\"id\": 3, \"customer\": \"c9\", \"amount\": 30.0}\n",
            "{\"id\": 4, \"customer\": null, \"amount\": 40.0}\n",
            "{\"id\": 5, \"customer\": \"c1\", \"amount\": 50.0}\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("customers/part-0.csv"),
        "customer,tier\nc1,gold\nc2,silver\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!(
            r#"name = "join"
checkpoint = "ck"

[trigger]
{trigger}

[source]
kind = "file"
path = "orders"
format = "json"
order = "name"
schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "customer", type = "string" }},
  {{ name = "amount", type = "double" }},
]

[static_join]
on = ["customer"]
how = "{how}"
{refresh}

[static_join.table]
kind = "file"
path = "customers"
format = "csv"
header = true
schema = [
  {{ name = "customer", type = "string" }},
  {{ name = "tier", type = "string" }},
]

[sink]
kind = "json"
path = "out"
"#
        ),
    )
    .unwrap();
    dir
}

/// (id, tier) of every output row, by id.
fn tiers(out: &Path) -> Vec<(i64, Option<String>)> {
    let mut rows: Vec<(i64, Option<String>)> = committed_json_rows(out)
        .iter()
        .map(|r: &Value| {
            (
                r["id"].as_i64().unwrap(),
                r["tier"].as_str().map(str::to_string),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn an_inner_static_join_keeps_matched_rows_with_the_table_columns() {
    let dir = setup("inner", "", "available_now = true");
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let gold = Some("gold".to_string());
    assert_eq!(
        tiers(&dir.path().join("out")),
        vec![(1, gold.clone()), (2, Some("silver".into())), (5, gold)],
        "{err}"
    );
}

#[test]
fn a_left_static_join_keeps_every_row_with_nulls_where_nothing_matches() {
    let dir = setup("left", "", "available_now = true");
    let err = assert_ok(&run(&dir.path().join("pipeline.toml")));
    let gold = Some("gold".to_string());
    assert_eq!(
        tiers(&dir.path().join("out")),
        vec![
            (1, gold.clone()),
            (2, Some("silver".into())),
            (3, None),
            (4, None), // a null key matches nothing
            (5, gold),
        ],
        "{err}"
    );
    let row = &committed_json_rows(&dir.path().join("out"))[0];
    assert_eq!(row["amount"], 10.0, "stream columns stay: {row}");
}

#[test]
fn the_static_table_is_read_again_on_its_refresh_schedule() {
    let dir = setup(
        "inner",
        "refresh = \"200ms\"",
        "processing_time = \"100ms\"",
    );
    let mut child = weir()
        .arg("run")
        .arg(dir.path().join("pipeline.toml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = dir.path().join("out");
    let wait = |rows: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while committed_json_rows(&out).len() < rows {
            assert!(Instant::now() < deadline, "{rows} rows never arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(3);
    // c9 joins the table and c1 changes tier; rows read later see it.
    std::fs::write(
        dir.path().join("customers/part-0.csv"),
        "customer,tier\nc1,platinum\nc2,silver\nc9,bronze\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(
        dir.path().join("orders/b.json"),
        "{\"id\": 6, \"customer\": \"c9\", \"amount\": 60.0}\n{\"id\": 7, \"customer\": \"c1\", \"amount\": 70.0}\n",
    )
    .unwrap();
    wait(5);
    // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
    let gold = Some("gold".to_string());
    assert_eq!(
        tiers(&out),
        vec![
            (1, gold.clone()),
            (2, Some("silver".into())),
            (5, gold),
            (6, Some("bronze".into())),
            (7, Some("platinum".into())),
        ]
    );
}

#[test]
fn static_join_mistakes_are_reported() {
    let dir = setup("inner", "", "available_now = true");
    let file = dir.path().join("pipeline.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    crate::common::assert_refusals(
        &file,
        &original,
        &[
            (
                "on = [\"customer\"]",
                "on = [\"client\"]",
                "join key `client` is not a column of the table",
            ),
            ("on = [\"customer\"]", "on = []", "needs at least one key"),
            (
                "how = \"inner\"",
                "how = \"outer\"",
                "unknown variant `outer`",
            ),
        ],
    );
    // A table column that clashes with a stream column is refused when the
    // first batch meets it.
    std::fs::write(
        dir.path().join("customers/part-0.csv"),
        "customer,amount\nc1,1.0\n",
    )
    .unwrap();
    let text = original.replace(
        "{ name = \"tier\", type = \"string\" }",
        "{ name = \"amount\", type = \"double\" }",
    );
    std::fs::write(&file, text).unwrap();
    let out = run(&file);
    let err = crate::common::stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("both have a column `amount`"), "{err}");
}
