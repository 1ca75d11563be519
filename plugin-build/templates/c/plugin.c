/*
 * `{{name}}`: a Weir transform in C. `weir plugin build` generates the
 * bindings (transform_plugin.h), compiles this file with clang for
 * wasm32-wasi and makes the component. weir_batch.h (shipped with Weir)
 * reads and builds columns and parses the JSON config.
 *
 * Ownership: the arguments are yours to free or move; what you return is
 * freed by the bindings after the call.
 */
#include "transform_plugin.h"
#include "weir_batch.h"

bool exports_weir_plugin_transform_init(transform_plugin_string_t *config,
                                        exports_weir_plugin_transform_plugin_error_t *err) {
  /* `config` is the stage's `config` table as JSON (see weir_json_object). */
  transform_plugin_string_free(config);
  return true;
}

bool exports_weir_plugin_transform_process(exports_weir_plugin_transform_batch_t *input,
                                           exports_weir_plugin_transform_list_batch_t *ret,
                                           exports_weir_plugin_transform_plugin_error_t *err) {
  transform_plugin_string_t name;
  transform_plugin_string_set(&name, "rows");
  weir_plugin_host_counter_add(&name, (int64_t)input->num_rows);
  /* Change the batch here: filter rows, add or drop columns, split it. */
  ret->len = 1;
  ret->ptr = weir_alloc(sizeof *ret->ptr);
  ret->ptr[0] = *input;
  return true;
}
