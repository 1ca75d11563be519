// The `enrich` transform in JavaScript (the same transform as plugins/enrich
// in Rust): appends `output = input * multiply + add` as a float64 column.
// Columns are apache-arrow Vectors (`weir-arrow`, bundled by `weir plugin
// build` together with apache-arrow from npm).
import { Float64, makeData, makeVector } from 'apache-arrow';
import { columnVector, vectorColumn } from 'weir-arrow';

let config = null;

function fail(kind, message) {
  // A `result` error: componentize-js turns a thrown { payload } into `err(payload)`.
  const error = new Error(message);
  error.payload = { kind, message };
  throw error;
}

export const transform = {
  init(json) {
    let parsed;
    try { parsed = JSON.parse(json); } catch (e) { fail('config', `invalid enrich config: ${e}`); }
    if (typeof parsed.input !== 'string' || typeof parsed.output !== 'string') {
      fail('config', 'invalid enrich config: `input` and `output` are required');
    }
    config = { input: parsed.input, output: parsed.output, multiply: parsed.multiply ?? 1, add: parsed.add ?? 0 };
  },
  process(input) {
    const index = input.fields.findIndex((f) => f.name === config.input);
    if (index < 0) fail('input', `input column \`${config.input}\` not found`);
    const field = input.fields[index];
    if (field.dataType.tag !== 'float64' && field.dataType.tag !== 'int64') {
      fail('input', `column \`${config.input}\` has type ${field.dataType.tag}; expected int64 or float64`);
    }
    // The input as an Arrow vector; its values as a typed array (a null
    // slot's value is unspecified: computed, then masked by the same bitmap).
    const data = columnVector(input, index).data[0];
    const source = data.values;
    const computed = new Float64Array(data.length);
    const { multiply, add } = config;
    if (field.dataType.tag === 'float64') {
      for (let i = 0; i < data.length; i++) computed[i] = source[i] * multiply + add;
    } else {
      for (let i = 0; i < data.length; i++) computed[i] = Number(source[i]) * multiply + add;
    }
    const output = makeVector(makeData({
      type: new Float64(), length: data.length, nullCount: data.nullCount, nullBitmap: data.nullBitmap, data: computed,
    }));
    return [{
      fields: [...input.fields, { name: config.output, dataType: { tag: 'float64' }, nullable: field.nullable }],
      numRows: input.numRows,
      columns: [...input.columns, vectorColumn(output)],
    }];
  },
};
