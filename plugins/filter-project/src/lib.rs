//! Example transform (a filter plus projection) driven by its config:
//!
//! ```toml
//! [[transform]]
//! name = "big_orders"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_filter_project.wasm"
//! config = { filter = { column = "amount", op = ">=", value = 10 }, select = ["id", "amount"] }
//! ```
//!
//! `op` is one of `==`, `!=`, `<`, `<=`, `>`, `>=`; numbers compare with
//! int64/float64 columns, strings with utf8 columns. Rows where the column
//! is null never match. Without `select` all columns are kept.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, BooleanArray, RecordBatch};
use arrow_schema::DataType;
use arrow_select::filter::filter_record_batch;
use serde::Deserialize;
use weir_sdk::{Config, Error, Transform};

/// Configuration of the `filter-project` transform.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterProjectConfig {
    /// Keep only rows matching this predicate (all rows when absent).
    pub filter: Option<Predicate>,
    /// Output columns in order (all columns when absent).
    pub select: Option<Vec<String>>,
}

/// `column op value`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Predicate {
    /// Column to test.
    pub column: String,
    /// Comparison operator.
    pub op: Op,
    /// Literal to compare with.
    pub value: Literal,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum Op {
    /// Equal.
    #[serde(rename = "==")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    fn test<T: PartialOrd + ?Sized>(self, a: &T, b: &T) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

/// A literal in a predicate.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    /// A whole number.
    Int(i64),
    /// A real number.
    Float(f64),
    /// A string.
    Text(String),
}

/// The filter-project transform.
pub struct FilterProject {
    config: FilterProjectConfig,
}

impl Transform for FilterProject {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(FilterProject {
            config: config.parse()?,
        })
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error> {
        let batch = match &self.config.filter {
            Some(predicate) => {
                let kept = filter_record_batch(&batch, &mask(&batch, predicate)?)?;
                let dropped = batch.num_rows() - kept.num_rows();
                weir_sdk::host::counter_add("rows_filtered_out", dropped as i64);
                kept
            }
            None => batch,
        };
        let batch = match &self.config.select {
            Some(names) => {
                let schema = batch.schema();
                let indices = names
                    .iter()
                    .map(|n| {
                        schema
                            .index_of(n)
                            .map_err(|_| Error::input(format!("select: column `{n}` not found")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                batch.project(&indices)?
            }
            None => batch,
        };
        Ok(vec![batch])
    }
}

fn mask(batch: &RecordBatch, p: &Predicate) -> Result<BooleanArray, Error> {
    let column = batch
        .column_by_name(&p.column)
        .ok_or_else(|| Error::input(format!("filter: column `{}` not found", p.column)))?;
    let mismatch = || {
        Error::config(format!(
            "filter: cannot compare column `{}` of type {} with {:?}",
            p.column,
            column.data_type(),
            p.value
        ))
    };
    let keep: BooleanArray = match (column.data_type(), &p.value) {
        (DataType::Int64, Literal::Int(v)) => column
            .as_primitive::<Int64Type>()
            .iter()
            .map(|x| Some(x.is_some_and(|x| p.op.test(&x, v))))
            .collect(),
        (DataType::Int64, Literal::Float(v)) => column
            .as_primitive::<Int64Type>()
            .iter()
            .map(|x| Some(x.is_some_and(|x| p.op.test(&(x as f64), v))))
            .collect(),
        (DataType::Float64, Literal::Int(v)) => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|x| Some(x.is_some_and(|x| p.op.test(&x, &(*v as f64)))))
            .collect(),
        (DataType::Float64, Literal::Float(v)) => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|x| Some(x.is_some_and(|x| p.op.test(&x, v))))
            .collect(),
        (DataType::Utf8, Literal::Text(v)) => column
            .as_string::<i32>()
            .iter()
            .map(|x| Some(x.is_some_and(|x| p.op.test(x, v.as_str()))))
            .collect(),
        _ => return Err(mismatch()),
    };
    Ok(keep)
}

weir_sdk::export_transform!(FilterProject);
