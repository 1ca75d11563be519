//! The physical batch layout that crosses the Weir host/plugin boundary.
//!
//! A batch crosses the WIT interface as a schema plus one [`ColumnParts`] per
//! column: the Arrow columnar format's own buffers (validity bitmap, offsets,
//! values), always starting at offset 0. Host and guest both convert between
//! Arrow arrays and this form with the functions here, so the two sides can
//! never disagree about the layout. The WIT records that carry the parts are
//! generated separately on each side (wasmtime `bindgen!` on the host,
//! `wit-bindgen` in the SDK); the macros [`wit_batch_lift!`],
//! [`wit_batch_lower_owned!`] and [`wit_data_type_lower!`] map them field by
//! field. [`ColumnView`] borrows the buffers instead of copying them (the
//! host lowers arguments from it).
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Array, ArrayRef, Int64Array};
//! use weir_columnar::{export_array, import_array};
//!
//! let array: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
//! let parts = export_array(&array).unwrap();
//! assert_eq!(parts.null_count, 1);
//! let back = import_array(array.data_type().clone(), parts).unwrap();
//! assert_eq!(&back, &array);
//! ```

mod wit;

/// Crates the expansions of [`wit_batch_lift!`] and friends refer to.
#[doc(hidden)]
pub mod reexports {
    pub use arrow_array;
    pub use arrow_schema;
}

use arrow_array::{ArrayRef, make_array};
use arrow_buffer::Buffer;
use arrow_data::ArrayData;
use arrow_data::transform::{Capacities, MutableArrayData};
use arrow_schema::{ArrowError, DataType};

/// One Arrow array in its physical layout, with offset 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ColumnParts {
    /// Number of slots.
    pub len: usize,
    /// Number of null slots (0 when `validity` is `None`).
    pub null_count: usize,
    /// Validity bitmap, least-significant bit first; `None` when no slot is null.
    pub validity: Option<Vec<u8>>,
    /// The data type's buffers in Arrow order: `[values]` for primitive and
    /// boolean arrays, `[offsets, values]` for strings and binaries.
    pub buffers: Vec<Vec<u8>>,
}

/// Why a column could not cross the boundary.
#[derive(Debug)]
pub enum LayoutError {
    /// The data type has no representation in the WIT contract (yet).
    Unsupported(DataType),
    /// The buffers do not form a valid Arrow array of the declared type.
    Invalid(ArrowError),
}

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayoutError::Unsupported(dt) => {
                write!(
                    f,
                    "data type {dt} is not supported across the plugin boundary"
                )
            }
            LayoutError::Invalid(e) => write!(f, "invalid column buffers: {e}"),
        }
    }
}

impl std::error::Error for LayoutError {}

/// Whether `data_type` can cross the boundary: flat (non-nested) types only.
pub fn is_supported(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Null | Boolean
            | Int8
            | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | UInt64
            | Float32
            | Float64
            | Utf8
            | LargeUtf8
            | Binary
            | LargeBinary
            | Date32
            | Date64
            | Timestamp(_, _)
            | Decimal128(_, _)
    )
}

/// An array's buffers borrowed in the boundary layout (offset 0, only the
/// bytes the array covers). Build one with [`normalize`] then [`ColumnView::of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnView<'a> {
    /// Number of slots.
    pub len: usize,
    /// Number of null slots.
    pub null_count: usize,
    /// Validity bitmap, when some slot is null.
    pub validity: Option<&'a [u8]>,
    /// The type's buffers in Arrow order.
    pub buffers: Vec<&'a [u8]>,
}

impl<'a> ColumnView<'a> {
    /// Borrows the buffers of `data`, which must come from [`normalize`].
    pub fn of(data: &'a ArrayData) -> ColumnView<'a> {
        debug_assert_eq!(data.offset(), 0, "normalize the array first");
        // A buffer may be longer than the array needs (capacity rounding, or
        // a slice that kept offset 0); only the bytes the array covers cross.
        let buffers = data
            .buffers()
            .iter()
            .zip(buffer_byte_lens(data))
            .map(|(buffer, len)| &buffer.as_slice()[..len.min(buffer.len())])
            .collect();
        let validity = data.nulls().filter(|n| n.null_count() > 0).map(|nulls| {
            let start = nulls.offset() / 8;
            &nulls.buffer().as_slice()[start..start + data.len().div_ceil(8)]
        });
        ColumnView {
            len: data.len(),
            null_count: data.null_count(),
            validity,
            buffers,
        }
    }

    /// Copies the view into owned parts.
    pub fn to_parts(&self) -> ColumnParts {
        ColumnParts {
            len: self.len,
            null_count: self.null_count,
            validity: self.validity.map(<[u8]>::to_vec),
            buffers: self.buffers.iter().map(|b| b.to_vec()).collect(),
        }
    }
}

/// The array's data in a form [`ColumnView::of`] can borrow: a supported
/// type, offset 0, and a validity bitmap starting on a byte boundary
/// (sliced arrays are copied; others are shared, not copied).
pub fn normalize(array: &ArrayRef) -> Result<ArrayData, LayoutError> {
    if !is_supported(array.data_type()) {
        return Err(LayoutError::Unsupported(array.data_type().clone()));
    }
    let data = array.to_data();
    let aligned_nulls = data.nulls().is_none_or(|n| n.offset() % 8 == 0);
    // A sliced string array keeps offset 0 but its offsets start past 0:
    // sent as is, every value before the slice would cross too.
    let offsets_from_zero = match data.data_type() {
        DataType::Utf8 | DataType::Binary => offset_at::<i32>(&data, 0) == 0,
        DataType::LargeUtf8 | DataType::LargeBinary => offset_at::<i64>(&data, 0) == 0,
        _ => true,
    };
    if data.offset() == 0 && aligned_nulls && offsets_from_zero {
        Ok(data)
    } else {
        rebase(&data)
    }
}

/// Splits an array into owned buffers (see [`ColumnView`] to borrow them).
pub fn export_array(array: &ArrayRef) -> Result<ColumnParts, LayoutError> {
    Ok(ColumnView::of(&normalize(array)?).to_parts())
}

/// Like [`export_array`], but consumes the array and moves each buffer out
/// without copying when the array is its only owner and it was allocated
/// as a `Vec<u8>` (as buffers received across the boundary are): columns a
/// plugin passes through unchanged go back without a copy.
pub fn export_array_owned(array: ArrayRef) -> Result<ColumnParts, LayoutError> {
    let data = normalize(&array)?;
    drop(array);
    let view = ColumnView::of(&data);
    let (len, null_count) = (view.len, view.null_count);
    let validity = view.validity.map(<[u8]>::to_vec);
    let lens: Vec<usize> = view.buffers.iter().map(|b| b.len()).collect();
    let buffers: Vec<Buffer> = data.buffers().to_vec();
    drop(data);
    let buffers = buffers
        .into_iter()
        .zip(lens)
        .map(|(buffer, len)| match buffer.into_vec::<u8>() {
            Ok(mut bytes) => {
                bytes.truncate(len);
                bytes
            }
            Err(shared) => shared.as_slice()[..len].to_vec(),
        })
        .collect();
    Ok(ColumnParts {
        len,
        null_count,
        validity,
        buffers,
    })
}

/// Rebuilds an array of `data_type` from its buffers, validating everything:
/// the parts may come from an untrusted plugin.
pub fn import_array(data_type: DataType, parts: ColumnParts) -> Result<ArrayRef, LayoutError> {
    if !is_supported(&data_type) {
        return Err(LayoutError::Unsupported(data_type));
    }
    check_shapes(&data_type, &parts)?;
    let data = ArrayData::builder(data_type)
        .len(parts.len)
        .null_bit_buffer(parts.validity.map(Buffer::from_vec))
        .buffers(parts.buffers.into_iter().map(Buffer::from_vec).collect())
        // Guest allocations need not meet Arrow's alignment; copy those that miss.
        .align_buffers(true)
        .build()
        .map_err(LayoutError::Invalid)?;
    if data.null_count() != parts.null_count {
        return Err(LayoutError::Invalid(ArrowError::InvalidArgumentError(
            format!(
                "declared null count {} but the validity bitmap has {}",
                parts.null_count,
                data.null_count()
            ),
        )));
    }
    Ok(make_array(data))
}

/// Checks what Arrow's builder assumes before it validates (it panics on
/// these instead of returning an error; both found by fuzzing): a validity
/// bitmap covering every slot, and buffers of whole elements.
fn check_shapes(data_type: &DataType, parts: &ColumnParts) -> Result<(), LayoutError> {
    let invalid = |message: String| {
        Err(LayoutError::Invalid(ArrowError::InvalidArgumentError(
            message,
        )))
    };
    if let Some(validity) = &parts.validity
        && validity.len() < parts.len.div_ceil(8)
    {
        return invalid(format!(
            "a validity bitmap of {} bytes for {} slots",
            validity.len(),
            parts.len
        ));
    }
    let first_width = match data_type {
        DataType::Utf8 | DataType::Binary => Some(4),
        DataType::LargeUtf8 | DataType::LargeBinary => Some(8),
        other => other.primitive_width(),
    };
    if let (Some(width), Some(first)) = (first_width, parts.buffers.first())
        && first.len() % width != 0
    {
        return invalid(format!(
            "a buffer of {} bytes is not a whole number of {width}-byte elements",
            first.len()
        ));
    }
    Ok(())
}

/// Rebuilds an array from buffers known to be valid, without validating
/// them (alignment is still fixed up by copying where needed).
///
/// # Safety
///
/// `parts` must form a valid Arrow array of `data_type`, e.g. because they
/// were produced by [`export_array`] from a valid array. The guest SDK uses
/// this for the host's input: the host only sends arrays it has validated.
pub unsafe fn import_array_trusted(
    data_type: DataType,
    parts: ColumnParts,
) -> Result<ArrayRef, LayoutError> {
    if !is_supported(&data_type) {
        return Err(LayoutError::Unsupported(data_type));
    }
    let builder = ArrayData::builder(data_type)
        .len(parts.len)
        .null_count(parts.null_count)
        .null_bit_buffer(parts.validity.map(Buffer::from_vec))
        .buffers(parts.buffers.into_iter().map(Buffer::from_vec).collect())
        .align_buffers(true);
    // SAFETY: the caller guarantees the parts form a valid array.
    let data = unsafe { builder.skip_validation(true) }
        .build()
        .map_err(LayoutError::Invalid)?;
    Ok(make_array(data))
}

/// Copies a sliced array into fresh buffers that start at offset 0.
fn rebase(data: &ArrayData) -> Result<ArrayData, LayoutError> {
    // Size string buffers to the slice: the default reserves the whole
    // source buffer, which made a 1-row slice of a big batch cost O(batch).
    let capacities = match data.data_type() {
        DataType::Utf8 | DataType::Binary => {
            Capacities::Binary(data.len(), Some(slice_value_bytes::<i32>(data)))
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            Capacities::Binary(data.len(), Some(slice_value_bytes::<i64>(data)))
        }
        _ => Capacities::Array(data.len()),
    };
    let mut mutable = MutableArrayData::with_capacities(vec![data], false, capacities);
    mutable
        .try_extend(0, 0, data.len())
        .map_err(LayoutError::Invalid)?;
    Ok(mutable.freeze())
}

/// Entry `i` of a string or binary array's offsets, counted from the
/// array's own offset.
fn offset_at<O: arrow_buffer::ArrowNativeType + TryInto<usize>>(
    data: &ArrayData,
    i: usize,
) -> usize {
    data.buffer::<O>(0)
        .get(data.offset() + i)
        .and_then(|o| (*o).try_into().ok())
        .unwrap_or(0)
}

/// Bytes of string or binary values a (possibly sliced) array covers.
fn slice_value_bytes<O: arrow_buffer::ArrowNativeType + TryInto<usize>>(data: &ArrayData) -> usize {
    offset_at::<O>(data, data.len()).saturating_sub(offset_at::<O>(data, 0))
}

/// The number of bytes of each buffer that an offset-0 array uses.
fn buffer_byte_lens(data: &ArrayData) -> Vec<usize> {
    use DataType::*;
    let len = data.len();
    match data.data_type() {
        Null => vec![],
        Boolean => vec![len.div_ceil(8)],
        Utf8 | Binary => vec![(len + 1) * 4, offset_at::<i32>(data, len)],
        LargeUtf8 | LargeBinary => vec![(len + 1) * 8, offset_at::<i64>(data, len)],
        other => vec![len * other.primitive_width().unwrap_or(0)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BooleanArray, Float64Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;

    fn round_trip(array: ArrayRef) -> ArrayRef {
        let parts = export_array(&array).unwrap();
        import_array(array.data_type().clone(), parts).unwrap()
    }

    #[test]
    fn sliced_arrays_round_trip_at_offset_zero() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("ccc"),
            Some("dd"),
        ]));
        let sliced = strings.slice(1, 3);
        let back = round_trip(sliced.clone());
        assert_eq!(back.to_data().offset(), 0);
        assert_eq!(&back, &sliced);
        // Only the slice's own values cross, with offsets from 0.
        let parts = export_array(&strings.slice(2, 2)).unwrap();
        assert_eq!(parts.buffers[1], b"cccdd");
        assert_eq!(
            parts.buffers[0],
            [0i32, 3, 5].map(i32::to_le_bytes).concat()
        );

        let bools: ArrayRef = Arc::new(BooleanArray::from(vec![
            Some(true),
            None,
            Some(false),
            Some(true),
            None,
            Some(true),
            Some(false),
            Some(false),
            Some(true),
        ]));
        let sliced = bools.slice(3, 6);
        assert_eq!(&round_trip(sliced.clone()), &sliced);
    }

    #[test]
    fn primitive_and_temporal_round_trip() {
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5, 2.5, -3.0]));
        assert_eq!(&round_trip(floats.clone()), &floats);
        let ts: ArrayRef = Arc::new(
            TimestampMillisecondArray::from(vec![Some(1_700_000_000_000), None])
                .with_timezone("UTC"),
        );
        assert_eq!(&round_trip(ts.clone()), &ts);
    }

    #[test]
    fn corrupt_offsets_are_rejected() {
        let parts = ColumnParts {
            len: 2,
            null_count: 0,
            validity: None,
            // offsets 0, 10, 3: not monotonic and past the values
            buffers: vec![
                [0i32, 10, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
                b"abc".to_vec(),
            ],
        };
        let err = import_array(DataType::Utf8, parts).unwrap_err();
        assert!(matches!(err, LayoutError::Invalid(_)), "{err}");
    }

    #[test]
    fn short_values_buffer_is_rejected() {
        let parts = ColumnParts {
            len: 4,
            null_count: 0,
            validity: None,
            buffers: vec![vec![0u8; 8]],
        };
        assert!(import_array(DataType::Int64, parts).is_err());
    }

    #[test]
    fn nested_types_are_reported_unsupported() {
        let dt = DataType::List(Arc::new(arrow_schema::Field::new(
            "item",
            DataType::Int32,
            true,
        )));
        assert!(!is_supported(&dt));
        let empty = arrow_array::new_empty_array(&dt);
        assert!(matches!(
            export_array(&empty),
            Err(LayoutError::Unsupported(_))
        ));
        assert_eq!(empty.len(), 0);
    }
}
