//! Column types in pipeline files: Arrow's own names (`Int64`,
//! `Timestamp(Millisecond, None)`, ...) plus the short names Spark and SQL
//! users type (`long`, `string`, `timestamp`, ...).

use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};

/// Parses a column type name; `None` when it is unknown.
pub fn parse_data_type(name: &str) -> Option<DataType> {
    let alias = match name.trim().to_ascii_lowercase().as_str() {
        "bool" | "boolean" => Some(DataType::Boolean),
        "tinyint" | "byte" | "int8" => Some(DataType::Int8),
        "smallint" | "short" | "int16" => Some(DataType::Int16),
        "int" | "integer" | "int32" => Some(DataType::Int32),
        "bigint" | "long" | "int64" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float" | "real" | "float32" => Some(DataType::Float32),
        "double" | "float64" => Some(DataType::Float64),
        "string" | "str" | "text" | "varchar" | "utf8" => Some(DataType::Utf8),
        "large_string" | "large_utf8" => Some(DataType::LargeUtf8),
        "binary" | "bytes" => Some(DataType::Binary),
        "date" | "date32" => Some(DataType::Date32),
        // Spark's TIMESTAMP: microseconds, an instant in UTC.
        "timestamp" => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(Arc::from("+00:00")),
        )),
        "timestamp_ms" => Some(DataType::Timestamp(
            TimeUnit::Millisecond,
            Some(Arc::from("+00:00")),
        )),
        _ => None,
    };
    alias.or_else(|| DataType::from_str(name.trim()).ok())
}

/// The names accepted, for hints.
pub const KNOWN_TYPES: &str = "boolean, int, long, float, double, string, binary, date, timestamp, \
    timestamp_ms, or an Arrow type such as Int64, Utf8, Decimal128(10, 2), Timestamp(Millisecond, None)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_arrow_names() {
        assert_eq!(parse_data_type("long"), Some(DataType::Int64));
        assert_eq!(parse_data_type("Int64"), Some(DataType::Int64));
        assert_eq!(
            parse_data_type("Decimal128(10, 2)"),
            Some(DataType::Decimal128(10, 2))
        );
        assert_eq!(
            parse_data_type("Timestamp(Millisecond, None)"),
            Some(DataType::Timestamp(TimeUnit::Millisecond, None))
        );
        assert_eq!(parse_data_type("lng"), None);
    }
}
