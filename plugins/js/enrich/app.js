// The `enrich` transform in JavaScript (the same transform as plugins/enrich
// in Rust): appends `output = input * multiply + add` as a float64 column.
// It reads and builds the batch layout directly (see docs/plugin-guide.md).
let config = null;

function fail(kind, message) {
  // A `result` error: componentize-js turns a thrown { payload } into `err(payload)`.
  const error = new Error(message);
  error.payload = { kind, message };
  throw error;
}

function read(batch, index) {
  const column = batch.columns[index];
  const tag = batch.fields[index].dataType.tag;
  const n = Number(column.len);
  const buffer = column.buffers[0];
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const valid = (i) => column.validity === undefined || ((column.validity[i >> 3] >> (i & 7)) & 1) === 1;
  const out = new Array(n);
  for (let i = 0; i < n; i++) {
    if (!valid(i)) { out[i] = null; continue; }
    out[i] = tag === 'float64' ? view.getFloat64(i * 8, true) : Number(view.getBigInt64(i * 8, true));
  }
  return out;
}

function float64Column(values) {
  const n = values.length;
  const data = new Uint8Array(n * 8);
  const view = new DataView(data.buffer);
  let nulls = 0;
  const bits = new Uint8Array((n + 7) >> 3);
  for (let i = 0; i < n; i++) {
    if (values[i] === null) { nulls++; continue; }
    bits[i >> 3] |= 1 << (i & 7);
    view.setFloat64(i * 8, values[i], true);
  }
  return { len: BigInt(n), nullCount: BigInt(nulls), validity: nulls ? bits : undefined, buffers: [data] };
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
    const values = read(input, index);
    const computed = values.map((v) => (v === null ? null : v * config.multiply + config.add));
    return [{
      fields: [...input.fields, { name: config.output, dataType: { tag: 'float64' }, nullable: field.nullable }],
      numRows: input.numRows,
      columns: [...input.columns, float64Column(computed)],
    }];
  },
};
