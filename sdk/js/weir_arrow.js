// weir-arrow: Weir batches as apache-arrow vectors, for JavaScript plugins.
//
// A batch crossing the WIT boundary is Arrow's columnar format laid out as
// WIT records (per column: validity bitmap, then the Arrow buffers). This
// module wraps a column's buffers as an apache-arrow Vector without copying
// (unless a buffer is misaligned for its typed array) and turns a Vector back
// into a WIT column. `weir plugin build` bundles it, with apache-arrow, into
// the component: `import { columnVector, vectorColumn } from 'weir-arrow'`.
import {
  Binary, Bool, Date_, DateUnit, Float32, Float64, Int8, Int16, Int32, Int64,
  LargeUtf8, Uint8, Uint16, Uint32, Uint64, Utf8, makeData, makeVector,
} from 'apache-arrow';

const TYPES = {
  boolean: () => new Bool(),
  int8: () => new Int8(), int16: () => new Int16(), int32: () => new Int32(), int64: () => new Int64(),
  uint8: () => new Uint8(), uint16: () => new Uint16(), uint32: () => new Uint32(), uint64: () => new Uint64(),
  float32: () => new Float32(), float64: () => new Float64(),
  utf8: () => new Utf8(), largeUtf8: () => new LargeUtf8(), binary: () => new Binary(),
  date32: () => new Date_(DateUnit.DAY), date64: () => new Date_(DateUnit.MILLISECOND),
};

/** A typed array over `bytes` (copied when its offset is misaligned). */
function typed(ArrayType, bytes) {
  const width = ArrayType.BYTES_PER_ELEMENT;
  const source = bytes.byteOffset % width === 0 ? bytes : bytes.slice();
  return new ArrayType(source.buffer, source.byteOffset, source.byteLength / width);
}

/** The type names this module reads (WIT `data-type` tags). */
export const SUPPORTED = Object.keys(TYPES);

/** Column `index` of a WIT batch as an apache-arrow Vector. */
export function columnVector(batch, index) {
  const tag = batch.fields[index].dataType.tag;
  const make = TYPES[tag];
  if (!make) throw new Error(`weir-arrow: columns of type ${tag} are not supported yet`);
  const type = make();
  const column = batch.columns[index];
  const props = {
    type,
    length: Number(column.len),
    nullCount: Number(column.nullCount),
    nullBitmap: column.validity ?? null,
  };
  if (column.buffers.length === 2) {
    props.valueOffsets = typed(type.OffsetArrayType, column.buffers[0]);
    props.data = column.buffers[1];
  } else {
    props.data = typed(type.ArrayType, column.buffers[0]);
  }
  return makeVector(makeData(props));
}

/** An apache-arrow Vector as a WIT column (its first chunk, offset 0). */
export function vectorColumn(vector) {
  const data = vector.data.length === 1 ? vector.data[0] : makeVector(vector.toArray()).data[0];
  const bytes = (array) => new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  const buffers = data.valueOffsets
    ? [bytes(data.valueOffsets), bytes(data.values)]
    : [bytes(data.values)];
  return {
    len: BigInt(data.length),
    nullCount: BigInt(data.nullCount),
    validity: data.nullCount > 0 ? bytes(data.nullBitmap) : undefined,
    buffers,
  };
}
