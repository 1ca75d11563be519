"""Reading and building Weir batches in pure Python.

A batch crossing the WIT boundary is Arrow's columnar format laid out as WIT
records: per column a validity bitmap (least-significant bit first, set =
valid) and the Arrow buffers, little-endian, from offset 0. This module turns
the common column types into Python lists (None for nulls) and back.
"""

import struct

from wit_world.imports import types

_FORMATS = {
    types.DataType_Int8: "b", types.DataType_Int16: "h", types.DataType_Int32: "i",
    types.DataType_Int64: "q", types.DataType_Uint8: "B", types.DataType_Uint16: "H",
    types.DataType_Uint32: "I", types.DataType_Uint64: "Q", types.DataType_Float32: "f",
    types.DataType_Float64: "d", types.DataType_Date32: "i", types.DataType_Date64: "q",
}


def _valid(column, row):
    if column.validity is None:
        return True
    return (column.validity[row >> 3] >> (row & 7)) & 1 == 1


def column_index(batch, name):
    """The position of column `name`, or None."""
    for i, field in enumerate(batch.fields):
        if field.name == name:
            return i
    return None


def read(batch, index):
    """Column `index` as a list of Python values (None for nulls)."""
    column = batch.columns[index]
    data_type = batch.fields[index].data_type
    n = column.len
    fmt = _FORMATS.get(type(data_type))
    if fmt is not None:
        values = struct.unpack_from("<%d%s" % (n, fmt), column.buffers[0]) if n else ()
        return [v if _valid(column, i) else None for i, v in enumerate(values)]
    if isinstance(data_type, types.DataType_Boolean):
        bits = column.buffers[0]
        return [bool((bits[i >> 3] >> (i & 7)) & 1) if _valid(column, i) else None for i in range(n)]
    if isinstance(data_type, (types.DataType_Utf8, types.DataType_Binary)):
        offsets = struct.unpack_from("<%di" % (n + 1), column.buffers[0])
        data = column.buffers[1]
        utf8 = isinstance(data_type, types.DataType_Utf8)
        out = []
        for i in range(n):
            if not _valid(column, i):
                out.append(None)
                continue
            raw = bytes(data[offsets[i]:offsets[i + 1]])
            out.append(raw.decode("utf-8") if utf8 else raw)
        return out
    raise TypeError("weir_batch cannot read %s columns" % type(data_type).__name__)


def _validity(values):
    if all(v is not None for v in values):
        return None, 0
    bits = bytearray((len(values) + 7) // 8)
    nulls = 0
    for i, v in enumerate(values):
        if v is None:
            nulls += 1
        else:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits), nulls


def float64_column(values):
    """A float64 column from a list of floats and Nones."""
    validity, nulls = _validity(values)
    data = struct.pack("<%dd" % len(values), *[0.0 if v is None else v for v in values])
    return types.Column(len=len(values), null_count=nulls, validity=validity, buffers=[data])
