/*
 * The `enrich` example transform in C (the same transform as plugins/enrich
 * in Rust): appends `output = input * multiply + add` as a float64 column.
 *
 *   [[transform]]
 *   name = "to_eur"
 *   plugin = "weir_plugin_c_enrich.wasm"
 *   config = { input = "amount", output = "amount_eur", multiply = 0.92 }
 */
#include "transform_plugin.h"
#include "weir_batch.h"

static struct {
  char *input;
  char *output;
  double multiply;
  double add;
} config;

static bool config_error(exports_weir_plugin_transform_plugin_error_t *err, const char *why,
                         const char *key) {
  weir_error(err, WEIR_PLUGIN_TYPES_ERROR_KIND_CONFIG, "invalid enrich config: %s%s%s", why,
             key ? key : "", key ? "`" : "");
  return false;
}

bool exports_weir_plugin_transform_init(transform_plugin_string_t *json,
                                        exports_weir_plugin_transform_plugin_error_t *err) {
  char *input = NULL, *output = NULL;
  double multiply = 1.0, add = 0.0;
  weir_json_object object;
  weir_json_member m;
  int next = weir_json_object_open(&object, json->ptr, json->len) ? 1 : -1;
  bool ok = true;
  while (ok && next == 1 && (next = weir_json_object_next(&object, &m)) == 1) {
    if (!strcmp(m.key, "input") && m.kind == WEIR_JSON_STRING) {
      free(input);
      input = m.string;
      m.string = NULL;
    } else if (!strcmp(m.key, "output") && m.kind == WEIR_JSON_STRING) {
      free(output);
      output = m.string;
      m.string = NULL;
    } else if (!strcmp(m.key, "multiply") && m.kind == WEIR_JSON_NUMBER) {
      multiply = m.number;
    } else if (!strcmp(m.key, "add") && m.kind == WEIR_JSON_NUMBER) {
      add = m.number;
    } else {
      ok = config_error(err, "unknown field or wrong type: `", m.key);
    }
    weir_json_member_free(&m);
  }
  transform_plugin_string_free(json); /* arguments belong to the callee */
  if (ok && next < 0) ok = config_error(err, "not a JSON object", NULL);
  if (ok && (!input || !output))
    ok = config_error(err, "`input` and `output` are required", NULL);
  if (!ok) {
    free(input);
    free(output);
    return false;
  }
  free(config.input);
  free(config.output);
  config.input = input;
  config.output = output;
  config.multiply = multiply;
  config.add = add;
  return true;
}

bool exports_weir_plugin_transform_process(exports_weir_plugin_transform_batch_t *input,
                                           exports_weir_plugin_transform_list_batch_t *ret,
                                           exports_weir_plugin_transform_plugin_error_t *err) {
  ptrdiff_t index = weir_column_index(input, config.input);
  if (index < 0) {
    weir_error(err, WEIR_PLUGIN_TYPES_ERROR_KIND_INPUT, "input column `%s` not found",
               config.input);
    weir_plugin_types_batch_free(input);
    return false;
  }
  const weir_plugin_types_field_t *field = &input->fields.ptr[index];
  uint8_t tag = field->data_type.tag;
  if (tag != WEIR_PLUGIN_TYPES_DATA_TYPE_FLOAT64 && tag != WEIR_PLUGIN_TYPES_DATA_TYPE_INT64) {
    weir_error(err, WEIR_PLUGIN_TYPES_ERROR_KIND_INPUT,
               "column `%s` has type %s; expected int64 or float64", config.input,
               weir_type_name(tag));
    weir_plugin_types_batch_free(input);
    return false;
  }
  const weir_plugin_types_column_t *source = &input->columns.ptr[index];
  bool nullable = field->nullable;
  uint64_t rows = source->len;
  weir_plugin_types_column_t computed = weir_column_fixed(rows, sizeof(double));
  for (uint64_t row = 0; row < rows; row++) {
    if (!weir_is_valid(source, row)) {
      weir_set_null(&computed, row);
      continue;
    }
    double v = tag == WEIR_PLUGIN_TYPES_DATA_TYPE_FLOAT64 ? weir_get_f64(source, row)
                                                          : (double)weir_get_i64(source, row);
    weir_set_f64(&computed, row, v * config.multiply + config.add);
  }
  /* The input's columns pass through: move them into the one output batch. */
  weir_batch_append_column(input, config.output, WEIR_PLUGIN_TYPES_DATA_TYPE_FLOAT64, nullable,
                           computed);
  ret->len = 1;
  ret->ptr = weir_alloc(sizeof *ret->ptr);
  ret->ptr[0] = *input;
  return true;
}
