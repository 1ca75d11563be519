//! Aggregate functions: count, sum, min, max, avg, first, last. Nulls are
//! skipped, as in SQL; `first`/`last` follow event time (ties: arrival).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::error::{Result, WeirError};

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateFn {
    /// Rows (with `column`: non-null values).
    Count,
    /// Sum.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Mean, as float64.
    Avg,
    /// Value of the earliest row by event time.
    First,
    /// Value of the latest row by event time.
    Last,
}

/// A value being aggregated.
#[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize)]
pub enum Value {
    /// Integers (any integer column).
    Int(i64),
    /// Floats.
    Float(f64),
    /// Strings.
    Str(String),
}

/// One aggregate's running state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Acc {
    /// count
    Count(i64),
    /// sum (None until a non-null value)
    Sum(Option<Value>),
    /// min
    Min(Option<Value>),
    /// max
    Max(Option<Value>),
    /// avg: sum and count
    Avg(f64, i64),
    /// first: event time and value
    First(Option<(i64, Value)>),
    /// last: event time and value
    Last(Option<(i64, Value)>),
}

/// The values of an aggregate's input column, read once per batch.
pub enum Input {
    /// `count` without a column.
    Rows,
    /// Integer column.
    Int(Int64Array),
    /// Float column.
    Float(Float64Array),
    /// String column.
    Str(StringArray),
}

/// The column family an aggregate reads, which fixes its output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// No column (count(*)).
    Rows,
    /// Integers: output int64.
    Int,
    /// Floats: output float64.
    Float,
    /// Strings: output utf8 (min, max, first, last).
    Str,
}

impl Family {
    /// The family of `data_type`, if aggregates can read it.
    pub fn of(data_type: &DataType) -> Option<Family> {
        match data_type {
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                Some(Family::Int)
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => Some(Family::Int),
            DataType::Float32 | DataType::Float64 => Some(Family::Float),
            DataType::Utf8 | DataType::LargeUtf8 => Some(Family::Str),
            _ => None,
        }
    }
}

impl AggregateFn {
    /// A fresh accumulator.
    pub fn empty(self) -> Acc {
        match self {
            AggregateFn::Count => Acc::Count(0),
            AggregateFn::Sum => Acc::Sum(None),
            AggregateFn::Min => Acc::Min(None),
            AggregateFn::Max => Acc::Max(None),
            AggregateFn::Avg => Acc::Avg(0.0, 0),
            AggregateFn::First => Acc::First(None),
            AggregateFn::Last => Acc::Last(None),
        }
    }

    /// The output type for input `family`, or why the pair is invalid.
    pub fn output_type(self, family: Family) -> Result<DataType, String> {
        use AggregateFn::*;
        match (self, family) {
            (Count, _) => Ok(DataType::Int64),
            (_, Family::Rows) => Err(format!("{self:?} needs a column")),
            (Avg, Family::Int | Family::Float) => Ok(DataType::Float64),
            (Sum, Family::Str) | (Avg, Family::Str) => {
                Err(format!("{self:?} needs a numeric column"))
            }
            (_, Family::Int) => Ok(DataType::Int64),
            (_, Family::Float) => Ok(DataType::Float64),
            (_, Family::Str) => Ok(DataType::Utf8),
        }
    }
}

impl Input {
    /// Reads `column` (None for count(*)) as the family's array type.
    pub fn read(column: Option<&ArrayRef>, family: Family) -> Result<Input> {
        let as_type = |dt: DataType| {
            cast(column.expect("family has a column"), &dt)
                .map_err(|e| WeirError::format("aggregate input", e))
        };
        Ok(match family {
            Family::Rows => Input::Rows,
            Family::Int => Input::Int(
                as_type(DataType::Int64)?
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .cloned()
                    .expect("int64"),
            ),
            Family::Float => Input::Float(
                as_type(DataType::Float64)?
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .expect("float64"),
            ),
            Family::Str => Input::Str(
                as_type(DataType::Utf8)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .expect("utf8"),
            ),
        })
    }

    fn value(&self, row: usize) -> Option<Value> {
        match self {
            Input::Rows => None,
            Input::Int(a) => a.is_valid(row).then(|| Value::Int(a.value(row))),
            Input::Float(a) => a.is_valid(row).then(|| Value::Float(a.value(row))),
            Input::Str(a) => a
                .is_valid(row)
                .then(|| Value::Str(a.value(row).to_string())),
        }
    }
}

impl Acc {
    /// Adds row `row` of `input` (event time `ts`).
    pub fn update(&mut self, input: &Input, row: usize, ts: i64) {
        let value = input.value(row);
        match self {
            Acc::Count(n) => {
                if matches!(input, Input::Rows) || value.is_some() {
                    *n += 1;
                }
            }
            Acc::Sum(sum) => {
                if let Some(v) = value {
                    *sum = Some(match (sum.take(), v) {
                        (None, v) => v,
                        (Some(Value::Int(a)), Value::Int(b)) => Value::Int(a.wrapping_add(b)),
                        (Some(Value::Float(a)), Value::Float(b)) => Value::Float(a + b),
                        (Some(a), _) => a,
                    });
                }
            }
            Acc::Min(min) => {
                if let Some(v) = value
                    && min.as_ref().is_none_or(|m| v < *m)
                {
                    *min = Some(v);
                }
            }
            Acc::Max(max) => {
                if let Some(v) = value
                    && max.as_ref().is_none_or(|m| v > *m)
                {
                    *max = Some(v);
                }
            }
            Acc::Avg(sum, n) => match value {
                Some(Value::Int(v)) => {
                    *sum += v as f64;
                    *n += 1;
                }
                Some(Value::Float(v)) => {
                    *sum += v;
                    *n += 1;
                }
                _ => {}
            },
            Acc::First(first) => {
                if let Some(v) = value
                    && first.as_ref().is_none_or(|(t, _)| ts < *t)
                {
                    *first = Some((ts, v));
                }
            }
            Acc::Last(last) => {
                if let Some(v) = value
                    && last.as_ref().is_none_or(|(t, _)| ts >= *t)
                {
                    *last = Some((ts, v));
                }
            }
        }
    }

    /// Folds `other` (the same function over other rows) into `self`, as
    /// when two session windows merge.
    pub fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Avg(s, n), Acc::Avg(s2, n2)) => {
                *s += s2;
                *n += n2;
            }
            (Acc::Sum(a), Acc::Sum(Some(b))) => {
                *a = Some(match (a.take(), b) {
                    (None, b) => b.clone(),
                    (Some(Value::Int(x)), Value::Int(y)) => Value::Int(x.wrapping_add(*y)),
                    (Some(Value::Float(x)), Value::Float(y)) => Value::Float(x + y),
                    (Some(x), _) => x,
                })
            }
            (Acc::Min(a), Acc::Min(Some(b))) if a.as_ref().is_none_or(|a| b < a) => {
                *a = Some(b.clone())
            }
            (Acc::Max(a), Acc::Max(Some(b))) if a.as_ref().is_none_or(|a| b > a) => {
                *a = Some(b.clone())
            }
            (Acc::First(a), Acc::First(Some(b))) if a.as_ref().is_none_or(|a| b.0 < a.0) => {
                *a = Some(b.clone())
            }
            (Acc::Last(a), Acc::Last(Some(b))) if a.as_ref().is_none_or(|a| b.0 >= a.0) => {
                *a = Some(b.clone())
            }
            _ => {}
        }
    }

    /// The result value (None = null).
    pub fn result(&self) -> Option<Value> {
        match self {
            Acc::Count(n) => Some(Value::Int(*n)),
            Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) => v.clone(),
            Acc::Avg(_, 0) => None,
            Acc::Avg(sum, n) => Some(Value::Float(sum / *n as f64)),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map(|(_, v)| v.clone()),
        }
    }
}

/// Builds an output column of `data_type` from results.
pub fn build_column(data_type: &DataType, values: impl Iterator<Item = Option<Value>>) -> ArrayRef {
    match data_type {
        DataType::Int64 => Arc::new(
            values
                .map(|v| match v {
                    Some(Value::Int(i)) => Some(i),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Float64 => Arc::new(
            values
                .map(|v| match v {
                    Some(Value::Float(f)) => Some(f),
                    Some(Value::Int(i)) => Some(i as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        _ => Arc::new(
            values
                .map(|v| match v {
                    Some(Value::Str(s)) => Some(s),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
    }
}
