//! Example transform (a map): appends `output = input * multiply + add` as a
//! float64 column, e.g. a currency conversion.
//!
//! ```toml
//! [[transform]]
//! name = "to_eur"
//! plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
//! config = { input = "amount", output = "amount_eur", multiply = 0.92 }
//! ```

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, Float64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use weir_sdk::{Config, Error, Transform};

/// Configuration of the `enrich` transform.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Numeric input column (int64 or float64).
    pub input: String,
    /// Name of the appended float64 column.
    pub output: String,
    /// Factor applied to the input (default 1).
    #[serde(default = "one")]
    pub multiply: f64,
    /// Offset added after multiplying (default 0).
    #[serde(default)]
    pub add: f64,
}

fn one() -> f64 {
    1.0
}

/// The enrich transform.
pub struct Enrich {
    config: EnrichConfig,
    /// Output schema, cached for the input schema it was derived from.
    schema: Option<(SchemaRef, SchemaRef)>,
}

impl Transform for Enrich {
    fn new(config: Config) -> Result<Self, Error> {
        Ok(Enrich {
            config: config.parse()?,
            schema: None,
        })
    }

    fn process(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, Error> {
        let input = batch.column_by_name(&self.config.input).ok_or_else(|| {
            Error::input(format!("input column `{}` not found", self.config.input))
        })?;
        let (m, a) = (self.config.multiply, self.config.add);
        let computed: Float64Array = match input.data_type() {
            DataType::Float64 => input.as_primitive::<Float64Type>().unary(|v| v * m + a),
            DataType::Int64 => input
                .as_primitive::<Int64Type>()
                .unary(|v| v as f64 * m + a),
            other => {
                return Err(Error::input(format!(
                    "column `{}` has type {other}; expected int64 or float64",
                    self.config.input
                )));
            }
        };
        let schema = self.output_schema(&batch.schema());
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(computed));
        Ok(vec![RecordBatch::try_new(schema, columns)?])
    }
}

impl Enrich {
    fn output_schema(&mut self, input: &SchemaRef) -> SchemaRef {
        if let Some((cached_in, out)) = &self.schema
            && cached_in == input
        {
            return out.clone();
        }
        let nullable = input
            .field_with_name(&self.config.input)
            .map(|f| f.is_nullable())
            .unwrap_or(true);
        let mut fields = input.fields().to_vec();
        fields.push(Arc::new(Field::new(
            &self.config.output,
            DataType::Float64,
            nullable,
        )));
        let out = Arc::new(Schema::new(fields));
        self.schema = Some((input.clone(), out.clone()));
        out
    }
}

weir_sdk::export_transform!(Enrich);
