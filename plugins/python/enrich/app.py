"""The `enrich` example transform in Python: appends
`output = input * multiply + add` as a float64 column (the same transform as
plugins/enrich in Rust)."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

import weir_batch

_config = {}


def _error(kind, message):
    return Err(types.PluginError(kind=kind, message=message))


class Transform(exports.Transform):
    def init(self, config):
        global _config
        try:
            parsed = json.loads(config)
            _config = {
                "input": str(parsed["input"]),
                "output": str(parsed["output"]),
                "multiply": float(parsed.get("multiply", 1.0)),
                "add": float(parsed.get("add", 0.0)),
            }
        except (ValueError, KeyError, TypeError) as e:
            raise _error(types.ErrorKind.CONFIG, "invalid enrich config: %r" % (e,))

    def process(self, input):
        index = weir_batch.column_index(input, _config["input"])
        if index is None:
            raise _error(types.ErrorKind.INPUT, "input column `%s` not found" % _config["input"])
        field = input.fields[index]
        if not isinstance(field.data_type, (types.DataType_Float64, types.DataType_Int64)):
            raise _error(
                types.ErrorKind.INPUT,
                "column `%s` has type %s; expected int64 or float64"
                % (_config["input"], type(field.data_type).__name__),
            )
        m, a = _config["multiply"], _config["add"]
        values = weir_batch.read(input, index)
        computed = [None if v is None else float(v) * m + a for v in values]
        out_field = types.Field(
            name=_config["output"], data_type=types.DataType_Float64(), nullable=field.nullable
        )
        return [
            types.Batch(
                fields=input.fields + [out_field],
                num_rows=input.num_rows,
                columns=input.columns + [weir_batch.float64_column(computed)],
            )
        ]
